"""docs/api.md from the docstrings of keras_sngm's public API.

    .venv/bin/python tools/api_docs.py            # (re)writes docs/api.md  (make api-docs)
    .venv/bin/python tools/api_docs.py --check    # exit 1 if docs/api.md is not what it would write

Google-style sections (`Args:`, `Returns:`, `References:`) become Markdown lists, doctest
examples become `pycon` code blocks; everything else is the docstring as written.
"""

import argparse
import importlib
import inspect
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "api.md")

# (module, names documented in it, in order); a class brings its public methods defined here.
API = [
    ("keras_sngm", ["SNGM", "BlockSNGM", "LARS", "MSGD", "diagnostics"]),
    ("keras_sngm.callbacks", ["SNGMDiagnostics", "optimizer_values", "learning_rate_used", "keras_sngm_optimizer"]),
    ("keras_sngm.noise_scale", ["NoiseScaleEstimator", "unbiased_estimates", "critical_batch"]),
    ("keras_sngm.summary", ["EventWriter", "layout", "check_writable"]),
]
SECTIONS = ("Args", "Returns", "Raises", "References")
HEADER = """# API reference

Generated from the docstrings by `make api-docs` (`tools/api_docs.py`); the test suite
fails when this page and the code disagree. The examples run as doctests in the suite.
"""


def _sections(doc):
    """A docstring (dedented) as Markdown."""
    out, section, in_code, in_doctest = [], None, False, False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            out.append(stripped)
            continue
        if in_code:
            out.append(line[4:] if section else line)
            continue
        if stripped.startswith((">>>", "...")) or (in_doctest and stripped):
            if not in_doctest:
                out.append("```pycon")
                in_doctest = True
            out.append(stripped)
            continue
        if in_doctest:
            out.append("```")
            in_doctest = False
        if stripped.rstrip(":") in SECTIONS and stripped.endswith(":"):
            section = stripped[:-1]
            out.append(f"**{section}**\n")
            continue
        if section and line.startswith("    ") and not line.startswith("     "):  # an item
            item = stripped
            if section == "Args":
                m = re.match(r"(\*{0,2}[\w]+): (.*)", item)
                item = f"`{m.group(1)}`: {m.group(2)}" if m else item
            out.append(item if item.startswith("- ") else f"- {item}")
            continue
        if section and line.startswith("     "):  # the item goes on
            out[-1] += " " + stripped
            continue
        if stripped:
            section = None
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out).strip() + "\n"


def _signature(qualname, obj):
    try:
        target = obj.__init__ if inspect.isclass(obj) else obj
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return qualname
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return f"{qualname}({', '.join(str(p) for p in params)})"


def _entry(level, qualname, obj):
    parts = [f"{'#' * level} `{qualname}`\n", f"```python\n{_signature(qualname, obj)}\n```\n",
             _sections(inspect.cleandoc(obj.__doc__ or "(no docstring)"))]
    if inspect.isclass(obj):
        for name, member in obj.__dict__.items():
            if name.startswith("_") or not callable(member) or not member.__doc__:
                continue
            parts.append(_entry(level + 1, f"{qualname}.{name}", member))
        for base in obj.__mro__[1:]:  # methods a keras_sngm base class gives it (diagnostics)
            if base.__module__.startswith("keras_sngm") and base is not obj:
                for name, member in base.__dict__.items():
                    if (not name.startswith("_") and callable(member) and member.__doc__ and name not in obj.__dict__
                            and name != "get_config"):
                        parts.append(_entry(level + 1, f"{qualname}.{name}", member))
    return "\n".join(parts)


def render():
    sys.path.insert(0, ROOT)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pages = [HEADER]
    for module_name, names in API:
        module = importlib.import_module(module_name)
        pages.append(f"## `{module_name}`\n\n{_sections(inspect.cleandoc(module.__doc__ or ''))}")
        for name in names:
            pages.append(_entry(3, f"{module_name}.{name}", getattr(module, name)))
    return "\n".join(pages).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != text:
            print("docs/api.md is stale: run `make api-docs`", file=sys.stderr)
            return 1
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
