"""The Markdown tables of a report."""

from futurefill.bench import tables


def test_markdown_table_aligned():
    text = tables.markdown_table(["a", "bb"], [["1", "2"], ["333", "4"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---")


def test_cells_of_seconds_and_cache_bytes():
    row = {"decode_s": 0.0125, "peak_cache_bytes": 3 * 1024**2}
    assert tables.seconds_of("decode_s")(row) == "12.5 ms"
    assert tables.cache_cell(row) == "3.0 MiB"
