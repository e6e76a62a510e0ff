"""Regenerates the tables of docs/results.md from the studies' own outputs.

    python tools/results_page.py cpu-cifar=runs/study-cpu-cifar cpu-ctr=runs/study-cpu-ctr
    python tools/results_page.py published

For each NAME=DIR: re-runs the study's report on DIR (so the tables follow the code that
makes them), copies results.md, results.csv, curves.csv, study.json and the PNGs into
docs/results/NAME/, and replaces the text between `<!-- generated: NAME -->` and
`<!-- end: NAME -->` in docs/results.md with the summary part of DIR/results.md (the
per-run table stays in docs/results/NAME/results.md). `published` fills the block
`<!-- generated: published -->` with every published table the GPU presets cite, from
`trainers/presets.py`, beside empty cells for the runs this project has not made.
Nothing in those blocks is edited by hand.
"""

import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COPIED = ("results.md", "results.csv", "curves.csv", "study.json")


def summary(results_md):
    """Everything before the per-run table."""
    return results_md.split("\nEvery run")[0].rstrip() + "\n"


def refresh(name, out, page):
    from keras_sngm_trainers import study

    spec = json.load(open(os.path.join(out, "study.json")))
    spec["arms"] = [dict(a) for a in spec["arms"]]
    if spec.get("paper"):  # JSON keys are strings: back to batch sizes
        spec["paper"]["rows"] = {m: {int(b): v for b, v in r.items()} for m, r in spec["paper"]["rows"].items()}
    study.report(spec, out)
    dest = os.path.join(ROOT, "docs", "results", name)
    os.makedirs(dest, exist_ok=True)
    for f in os.listdir(out):
        if f in COPIED or f.endswith(".png"):
            shutil.copyfile(os.path.join(out, f), os.path.join(dest, f))
    truth = os.path.join(out, "data", "truth.json")
    if os.path.isfile(truth):
        shutil.copyfile(truth, os.path.join(dest, "truth.json"))
    block = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
    if not block.search(page):
        raise SystemExit(f"docs/results.md has no '<!-- generated: {name} -->' ... '<!-- end: {name} -->' block")
    text = summary(open(os.path.join(out, "results.md")).read())
    return block.sub(lambda m: m.group(1) + text + m.group(2), page)




def published():
    """Markdown: each GPU preset's published cells, arm by arm, beside an empty cell of ours."""
    from keras_sngm_trainers import presets

    out = []
    for name, spec in presets.PRESETS.items():
        paper = spec.get("paper")
        if not name.startswith("paper-") or not paper:
            continue
        out += [f"`--preset {name}`: {paper['source']}, {paper['metric']}", "",
                "| arm | batch | published | ours |", "| --- | ---: | ---: | --- |"]
        shown = set()
        fmt = (lambda v: f"{v:.2f}") if "%" in paper["metric"] else (lambda v: f"{v:.4f}")  # noqa: E731
        not_run = ("not run here (needs 8 GPUs)" if spec["workers"] > 1 else
                   "not run here (needs the Criteo logs; `cpu-ctr-paper` runs the protocol on planted rows)")
        for a in spec["arms"]:
            value = paper["rows"].get(a["label"], {}).get(a["batch"])
            shown.add((a["label"], a["batch"]))
            out.append(f"| {a['label']} | {a['batch']} | {'not in the table' if value is None else fmt(value)} | "
                       f"{not_run} |")
        for label, cells in paper["rows"].items():  # published rows without an arm of ours (other methods)
            for batch, value in cells.items():
                if (label, batch) not in shown:
                    out.append(f"| {label} (not one of our arms) | {batch} | {fmt(value)} | |")
        out.append("")
    return "\n".join(out)


def main(argv):
    if not argv or any("=" not in a and a != "published" for a in argv):
        raise SystemExit(__doc__)
    path = os.path.join(ROOT, "docs", "results.md")
    page = open(path).read()
    if "published" in argv:
        block = re.compile(r"(<!-- generated: published -->\n).*?(<!-- end: published -->)", re.S)
        if not block.search(page):
            raise SystemExit("docs/results.md has no '<!-- generated: published -->' ... '<!-- end: published -->' block")
        page = block.sub(lambda m: m.group(1) + published() + m.group(2), page)
        argv = [a for a in argv if a != "published"]
    for arg in argv:
        name, out = arg.split("=", 1)
        if not os.path.isfile(os.path.join(out, "study.json")):
            raise SystemExit(f"{out}: not a study directory (no study.json)")
        page = refresh(name, out, page)
    with open(path, "w") as f:
        f.write(page)


if __name__ == "__main__":
    main(sys.argv[1:])
