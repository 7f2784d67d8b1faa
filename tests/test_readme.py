"""The Python snippets of README.md run as written and give what their comments say."""

import re
from pathlib import Path

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


def check_own_model(ns: dict) -> None:
    assert tuple(ns["tokens"].shape) == (2, 100)
    assert ns["model"].long.weight.shape == (64, 2048)


def check_session(ns: dict) -> None:
    assert tuple(ns["logits"].shape) == (2, 1, 256)
    assert ns["session"].closed and ns["session"].position == 17


def check_pretrained(ns: dict) -> None:
    assert tuple(ns["prompt"].shape) == (1, 11) and tuple(ns["new"].shape) == (1, 50)
    assert set(ns["sequence"]) <= set("ACGTN[]CLSEPBOMKRUDV")


def check_bundled(ns: dict) -> None:
    assert tuple(ns["new"].shape) == (1, 80) and isinstance(ns["text"], str)


CHECKS = [
    check_online_conv,
    check_generate,
    check_own_model,
    check_session,
    check_pretrained,
    check_bundled,
]


def test_readme_snippets_are_the_checked_ones():
    assert len(SNIPPETS) == len(CHECKS)


def test_snippets_run_in_order():
    """One namespace, as a reader runs them one after the other."""
    namespace: dict = {}
    for snippet, check in zip(SNIPPETS, CHECKS, strict=True):
        exec(compile("import torch\n" + snippet, str(README), "exec"), namespace)
        check(namespace)
