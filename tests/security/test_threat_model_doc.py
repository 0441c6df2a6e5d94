"""docs/security.md covers every threat the project names, and every test it cites exists."""
import re

from helpers import ROOT

DOC = ROOT / "docs/security.md"


def test_every_threat_has_a_section_with_defence_component_and_tests():
    text = DOC.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    titles = [s.splitlines()[0].lower() for s in sections]
    for threat in ("poisoning", "membership inference", "evasion", "sponge", "theft", "supply-chain", "s3",
                   "role escalation"):
        section = next((s for t, s in zip(titles, sections) if threat in t), None)
        assert section, f"no section on {threat}"
        for row in ("| Defence |", "| Component |", "| Tests |"):
            assert row in section, (threat, row)


def test_every_cited_test_exists():
    text = DOC.read_text()
    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "tests").rglob("*.py")}
    cited = 0
    for line in text.splitlines():
        current = None
        for path, name in re.findall(r"`(?:(tests/[\w/]+\.py))?(?:::(\w+))?", line):
            if path:
                assert path in sources, path
                current = path
            if name:
                assert current and f"def {name}(" in sources[current], f"{current}::{name}"
                cited += 1
    assert cited >= 25
