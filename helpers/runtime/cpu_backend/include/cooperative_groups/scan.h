// cooperative_groups/scan.h for the CPU backend: cg::inclusive_scan and cg::exclusive_scan live in
// cooperative_groups.h itself.
#pragma once
#include "../cooperative_groups.h"
