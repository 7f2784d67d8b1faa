"""The Markdown tables of a report."""

from futurefill.bench import tables


def test_markdown_table_aligned():
    text = tables.markdown_table(["a", "bb"], [["1", "2"], ["333", "4"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---")
