// cooperative_groups/reduce.h for the CPU backend: cg::reduce lives in cooperative_groups.h itself.
#pragma once
#include "../cooperative_groups.h"
