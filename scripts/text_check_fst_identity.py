#!/usr/bin/env python
"""Check that our kaldifst runtime gives WeTextProcessing's (pynini's) output, text for text.

    pip install WeTextProcessing==1.0.4.1 pynini==2.1.6 kaldifst==1.8.3
    python scripts/text_check_fst_identity.py [--cache-dir DIR] [--fuzz 2000] [--seed 0]

Reference side: WeTextProcessing's own `Normalizer.normalize` with the normalisers set up as the
original (index-tts f017ab2) sets them up: zh built with remove_interjections=False,
remove_erhua=False (both the first-run instance, which holds the freshly built grammars, and the
restart instance, which reads them back), en from the package's prebuilt grammars. Our side:
`WeTextNormalizer` (whole text, no chunking) on the cached grammars. Inputs: every golden text,
through both languages, plus random mixtures of golden texts with numbers, dates, symbols,
control characters, emoji and whitespace. Exit status 1 on any difference. Takes about 7 minutes on 2 cores and
about 7 GB of memory (the zh grammars are compiled again for the reference side).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "golden" / "text" / "frontend_cases.json"

_FRAGMENTS = ["2024年3月15日", "3:30", "12:00 PM", "$12.5", "¥12999", "€30", "1,234,567", "0.001", "50%",
              "-5℃", "10km/h", "135-4567-8900", "+86 10 1234 5678", "1/2", "3.14", "No. 5", "Dr. Who",
              "2024-03-15", "March 3, 1990", "1990s", "3rd", "21st", "x2", "A-B", "~", "……", "...", "——",
              "“", "”", "《", "》", "（", "）", "\n", "\t", "  ", "\x01", "\x1b[0m", "\u200b", "\ufeff", "😀",
              "👍🏽", "é", "Ａ", "ｂ", "一二三", "喂", "嗯", "呣", "哪儿", "xuan4", "zhong4", "jv3", "<", ">",
              "\\", '"', "'", "{", "}", "|", "@", "#", "&", "*", "_", "=", "+", "^", "`", "ni3hao3",
              '<"x">', '<a"b>', '1<:;&"Z>', "\tHi", "\xa0x"]


def _corpus(texts: list[str], n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rnd.randint(1, 5)):
            parts.append(rnd.choice(texts) if rnd.random() < 0.5 else rnd.choice(_FRAGMENTS))
        text = rnd.choice(["", " ", "，", ". "]).join(parts)
        if rnd.random() < 0.3 and len(text) > 4:   # truncate mid-text to hit odd boundaries
            text = text[: rnd.randint(1, len(text))]
        out.append(text)
    return out


def _reference(normalizer, text: str):
    try:
        return normalizer.normalize(text)
    except Exception:  # WeTextProcessing raises where no path exists (the original catches it)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--fuzz", type=int, default=2000, help="number of random texts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tn.chinese.normalizer import Normalizer as ZhNormalizer
    from tn.english.normalizer import Normalizer as EnNormalizer

    from indextts.text.grammars import ensure_grammars
    from indextts.text.wetext import WeTextNormalizer, WeTextOptions

    grammars = ensure_grammars(args.cache_dir)
    ours = {lang: WeTextNormalizer(grammars, lang, WeTextOptions(chunk_chars=None)) for lang in ("zh", "en")}
    with tempfile.TemporaryDirectory(prefix="wetext-ref-") as zh_cache:
        options = dict(cache_dir=zh_cache, remove_interjections=False, remove_erhua=False)
        references = {
            "zh (first run)": ("zh", ZhNormalizer(overwrite_cache=True, **options)),
            "zh (restart)": ("zh", ZhNormalizer(overwrite_cache=False, **options)),
            "en": ("en", EnNormalizer(overwrite_cache=False)),
        }
    texts = [case["text"] for case in json.loads(CASES.read_text())["cases"]]
    corpora = {"golden": texts, "fuzz": _corpus([t for t in texts if t.strip()], args.fuzz, args.seed)}
    failures = 0
    report = {}
    for corpus_name, corpus in corpora.items():
        for ref_name, (lang, reference) in references.items():
            same = 0
            for text in corpus:
                expected, got = _reference(reference, text), ours[lang].normalize(text)
                if expected == got:
                    same += 1
                else:
                    failures += 1
                    print(f"DIFF [{ref_name}] {text!r}\n  pynini:   {expected!r}\n  kaldifst: {got!r}")
            report[f"{corpus_name} / {ref_name}"] = f"{same}/{len(corpus)} identical"
    print(json.dumps({"grammar_dir": str(grammars.directory), "results": report}, indent=1, ensure_ascii=False))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
