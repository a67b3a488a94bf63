"""One fact, one place (issue 17, item 1): what the documents may not repeat, and where they point.

- Throughput figures (trials/s) live only in docs/benchmarks.md, in the table `make bench`
  rewrites; the README, the other documents, the example settings and the code link to it.
  The review found three different figures in three places.
- Modes are defined only in the packaged hpod/data/modes.toml; the copy config/modes.toml that
  documents pointed operators to is gone, and no document may point to it again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpod.modes import load_modes

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

#: A number followed by a throughput unit: "89 trials/s", "1,500 trials per second",
#: "130 trials a second", "164 / 20 / 42 trials/s".
THROUGHPUT = re.compile(
    r"\d[\d,.]*\s*(?:/\s*\d[\d,.]*\s*)*trials?\s*(?:/\s*s(?:ec)?\b|per\s+second|a\s+second)",
    re.IGNORECASE,
)


def _texts() -> list[Path]:
    """The documents, example settings and code an operator or a developer reads."""
    paths = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    paths += [p for p in (ROOT / "config").iterdir() if p.is_file()]
    paths += [p for p in (ROOT / "systemd").iterdir() if p.is_file()]
    paths += list((ROOT / "hpod").rglob("*.py")) + list((ROOT / "hpod").rglob("*.toml"))
    paths += list((ROOT / "examples").rglob("*.md"))
    return sorted(p for p in paths if p != BENCHMARKS)


def test_the_throughput_pattern_finds_the_figures_it_must() -> None:
    """The check below can fail: each way the stale figures were written is caught."""
    for text in [
        "ran 130 trials/s through RabbitMQ",
        "| 164 / 20 / 42 trials/s |",
        "manages only about 1,500\ntrials/s here",
        "ran 416 trials per second",
    ]:
        assert THROUGHPUT.search(text), text
    assert not THROUGHPUT.search("a few hundred trials per second")
    assert THROUGHPUT.search(BENCHMARKS.read_text()) is None  # its table says it in a header
    assert "| path | trials/s |" in BENCHMARKS.read_text()


@pytest.mark.parametrize("path", _texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_repeats_a_throughput_figure(path: Path) -> None:
    found = [m.group(0) for m in THROUGHPUT.finditer(path.read_text())]
    assert not found, (
        f"{path.relative_to(ROOT)} states {found}: link to docs/benchmarks.md"
        "#throughput-and-overhead (the latest `make bench` table) instead"
    )


def test_throughput_links_point_at_an_existing_heading() -> None:
    """The anchor every document links to is a heading of docs/benchmarks.md."""
    assert "\n## Throughput and overhead\n" in BENCHMARKS.read_text()
    linking = [p for p in _texts() if "#throughput-and-overhead" in p.read_text()]
    assert {"README.md", "docs/architecture.md", "docs/operations.md"} <= {
        str(p.relative_to(ROOT)) for p in linking
    }


def test_modes_have_one_source() -> None:
    assert not (ROOT / "config" / "modes.toml").exists()
    stale = [str(p.relative_to(ROOT)) for p in _texts() if "config/modes.toml" in p.read_text()]
    assert not stale, f"these point to the removed config/modes.toml: {stale}"


def test_the_operations_guide_modes_example_is_a_valid_modes_file(tmp_path: Path) -> None:
    """The example of docs/operations.md (only the keys that change) loads over the package's."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("/etc/hpod/modes.toml", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert example is not None
    path = tmp_path / "modes.toml"
    path.write_text(example.group(1))
    modes = load_modes(str(path))
    packaged = load_modes(None)
    assert modes["fast"].threshold == 0.1 and modes["fast"].ladder == packaged["fast"].ladder
    assert modes["overnight"].parallelism == 16
