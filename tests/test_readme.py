"""The Python snippets of README.md run as written and give what their comments say."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def check_online_conv(ns: dict) -> None:
    assert ns["conv"].position == 4096  # a 1000-token prompt, then 3096 steps
    assert tuple(ns["y_t"].shape) == (2, 128)
    assert tuple(ns["y"].shape) == (2, 128, 4096)
    assert tuple(ns["f"].shape) == (2, 128, 64)


def check_generate(ns: dict) -> None:
    assert tuple(ns["tokens"].shape) == (2, 256)
    assert int(ns["tokens"].min()) >= 0 and int(ns["tokens"].max()) < 256


CHECKS = [check_online_conv, check_generate]


def test_readme_snippets_are_the_checked_ones():
    assert len(SNIPPETS) == len(CHECKS)


@pytest.mark.parametrize("index", range(len(CHECKS)))
def test_snippet_runs(index):
    namespace: dict = {}
    exec(compile("import torch\n" + SNIPPETS[index], str(README), "exec"), namespace)
    CHECKS[index](namespace)
