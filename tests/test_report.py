"""The HTML report renders: self-contained, three pictures, the summary, both ends of the ranking, escaped text."""

import base64
import html.parser
import math

from conftest import hh_rows

import ches
from ches.report import write_report


class Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self.cells, self.links, self._tag = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("link", "script") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.links.append(attrs)

    def handle_data(self, data):
        if self._tag in ("h1", "h2"):
            self.headings.append(data)
        if self._tag in ("td", "pre"):
            self.cells.append(data)


def test_report_renders(tokenizer, tiny_model, tmp_path):
    rows = hh_rows(40)
    cut = rows[2]["rejected"].rfind("Assistant:") + len("Assistant:")
    rows[2] = dict(rows[2], rejected=rows[2]["rejected"][:cut] + " <script>alert(1)</script> & more" + rows[2]["rejected"][cut:])
    scored = ches.score(rows, tiny_model("llama"), tokenizer, max_length=160, progress=False)
    skipped = sum(reason is not None for reason in scored["ches_skip"])
    assert 0 < skipped < 30 and scored["ches_skip"][2] is None
    path = write_report(scored, tmp_path / "r.html", top=40 - skipped)  # every scored row is shown
    page = path.read_text(encoding="utf-8")
    parsed = Collector()
    parsed.feed(page)
    assert len(parsed.images) == 3 and parsed.links == []  # everything inline, nothing fetched
    for source in parsed.images:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{40 - skipped} highest ln_ches (most displacement-prone)" in parsed.headings
    assert f"{40 - skipped} lowest ln_ches (least displacement-prone)" in parsed.headings
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert f"{40 - skipped} of 40 rows scored, {skipped} skipped" in page
    # the first row shown in the 'highest' table is the row with the highest ln_ches
    values = [(v, i) for i, v in enumerate(scored["ln_ches"]) if not math.isnan(v)]
    best = max(values)[1]
    assert page.index(f"<td class='num'>{best}</td>") < page.index("lowest ln_ches")


def test_conversational_rows_are_shown_as_messages(tokenizer, tiny_model, tmp_path):
    from conftest import conversational_rows

    scored = ches.score(conversational_rows(hh_rows(6)), tiny_model("llama"), tokenizer, progress=False)
    page = write_report(scored, tmp_path / "c.html", top=2).read_text(encoding="utf-8")
    assert "[user] " in page and "[assistant] " in page


def test_report_reads_at_a_glance(tmp_path):
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    n = 60
    rows = [{"prompt": "Human: tell me ab", "chosen": "out it" if i == 0 else f" answer {i}", "rejected": "" if i == 1 else " no",
             "ches": float(rng.normal()) * (1e9 if i == 2 else 1e3), "ln_ches": float(rng.normal()),
             "edit_distance": 0.5, "last_hidden_ip": 1.0, "prompt_tokens": 3, "chosen_tokens": 5,
             "rejected_tokens": 2, "ches_skip": None} for i in range(n)]
    path = write_report(datasets.Dataset.from_list(rows), tmp_path / "r.html", top=n)
    page = path.read_text()
    assert "row (0-based)" in page and "Rows are numbered from 0" in page
    assert page.count("⟨cut⟩</span>") >= 2 and "(empty)" in page  # row 0 begins mid-word; row 1's rejected is empty
    assert "(1 not shown)" in page  # the 1e9 outlier is counted, not drawn
    assert "one side is constant" in page  # the length difference is constant: its correlation is explained
    assert "<span class='label'>ln_ches</span>" in page


def test_a_split_without_scores_is_named_and_nothing_is_written(tmp_path):
    import datasets
    import pytest

    scored = datasets.Dataset.from_list([{"chosen": "a", "rejected": "b", "ches": 1.0, "ln_ches": 0.5, "chosen_tokens": 1,
                                          "rejected_tokens": 1, "ches_skip": None}] * 3)
    parts = datasets.DatasetDict({"train": scored, "raw": datasets.Dataset.from_list(hh_rows(3))})
    with pytest.raises(ches.ChesError, match=r"^split 'raw' has no 'ches', 'ches_skip', 'chosen_tokens', "
                                             r"'rejected_tokens', 'ln_ches' column\(s\); report needs a file written by"):
        write_report(parts, tmp_path / "r.html")
    assert not list(tmp_path.iterdir())


def test_an_unknown_measure_is_refused_in_the_words_every_command_uses(tmp_path):
    """From Python as from ``ches report --measure``: the one measure check, before anything is written."""
    import pytest

    rows = [{"chosen": "a", "rejected": "b", "ches": 1.0, "ln_ches": 0.5, "ches_skip": None, "chosen_tokens": 1,
             "rejected_tokens": 1}]
    with pytest.raises(ches.ChesError) as raised:
        write_report(ches.load_data(rows), tmp_path / "r.html", measure="cosine")
    assert str(raised.value) == ("unknown measure 'cosine'; use one of ['ches', 'edit_distance', 'last_hidden_ip', "
                                 "'ln_ches'] (measure=, --measure).")
    assert not (tmp_path / "r.html").exists()
