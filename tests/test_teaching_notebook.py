"""helpers/teaching/notebook.py, the helpers every notebook shares: printing kernels and sections of
.cu files, expecting an error, and picking the learner's exercise file or the solution."""
import pytest

from helpers.teaching import notebook


def test_show_kernel_prints_the_function_with_its_comment(capsys):
    notebook.show_kernel("matmul.cu", "matmul_forward1")
    out = capsys.readouterr().out
    assert out.lstrip().startswith("//") and "matmul_forward1(" in out and out.rstrip().endswith("}")
    assert "matmul_forward2" not in out


def test_show_kernel_searches_the_included_headers(capsys):
    notebook.show_kernel("layernorm.cu", "block_sum")   # defined in cuda/common.cuh
    assert "block_sum(float v" in capsys.readouterr().out.replace("  ", " ")
    with pytest.raises(KeyError, match="'no_such_kernel' is defined neither in layernorm.cu nor in the headers"):
        notebook.kernel_text("layernorm.cu", "no_such_kernel")


def test_show_kernel_prints_defines(capsys):
    notebook.show_kernel("matmul.cu", "#define TILE")
    assert capsys.readouterr().out.lstrip("/ \n").count("#define TILE") == 1


def test_show_section_and_file_header(capsys):
    notebook.show_section("classifier.cu", "version 2")
    out = capsys.readouterr().out
    assert out.startswith("// version 2") and "fused_classifier2(" in out and "fused_classifier3(" not in out
    with pytest.raises(KeyError, match="sections of classifier.cu start with 'nothing'"):
        notebook.show_section("classifier.cu", "nothing")
    header = notebook.file_header("encoder.cu")
    assert header.startswith("// encoder.cu:") and all(line.startswith("//") for line in header.splitlines())


def test_expect_error(capsys):
    with notebook.expect_error(ValueError, "multiple of 4"):
        raise ValueError("C must be a multiple of 4, got C=5")
    assert "ValueError: C must be a multiple of 4" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="expected a ValueError, but nothing was raised"):
        with notebook.expect_error(ValueError):
            pass
    with pytest.raises(AssertionError, match="expected ValueError matching 'aligned', got: wrong"):
        with notebook.expect_error(ValueError, "aligned"):
            raise ValueError("wrong")
    with pytest.raises(TypeError):   # another kind of error is not swallowed
        with notebook.expect_error(ValueError):
            raise TypeError("not this one")


def test_exercise_prefers_the_learners_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebook, "NOTEBOOKS_DIR", tmp_path)
    assert notebook.exercise("my_lion.cu", "07_lion.cu") == notebook.SOLUTIONS_DIR / "07_lion.cu"
    assert "my_lion.cu not found: checking the reference solution" in capsys.readouterr().out
    (tmp_path / "my_lion.cu").write_text("// mine\n")
    assert notebook.exercise("my_lion.cu", "07_lion.cu") == tmp_path / "my_lion.cu"
    assert "checking your file" in capsys.readouterr().out
    assert (notebook.SOLUTIONS_DIR / "07_lion.cu").is_file()
