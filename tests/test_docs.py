"""Every Python code block of README.md and docs/*.md runs, so the docs
cannot go stale.

A ```python block runs in a fresh Python process (the repository on
PYTHONPATH, a temporary working directory). A block whose first line is
`# (continued)` runs in the same program as the block before it, so a page
can build an example up step by step. Blocks in other languages (```sh,
```text, ...) are shown, not run.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    [os.path.join(ROOT, "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _programs(page):
  """(first line number, source) of every program on a page."""
  text = open(page, encoding="utf-8").read()
  programs = []
  for m in _BLOCK.finditer(text):
    source = m.group(1)
    line = text.count("\n", 0, m.start()) + 2
    if source.startswith("# (continued)") and programs:
      programs[-1] = (programs[-1][0], programs[-1][1] + "\n" + source)
    else:
      programs.append((line, source))
  return programs


CASES = [
    (os.path.relpath(page, ROOT), line, source)
    for page in PAGES
    for line, source in _programs(page)
]


def test_docs_have_code():
  assert any(
      page.startswith("docs") for page, _, _ in CASES
  ), "no runnable docs blocks"


@pytest.mark.parametrize(
    "page,line,source", CASES, ids=["%s:%d" % (p, n) for p, n, _ in CASES]
)
@pytest.mark.slow
def test_doc_block_runs(tmp_path, page, line, source):
  env = dict(
      os.environ,
      PYTHONPATH=ROOT,
      CUDA_VISIBLE_DEVICES="",
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  env.pop("TFMH_TEST_MODE", None)
  proc = subprocess.run(
      [sys.executable, "-c", source],
      cwd=str(tmp_path),
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, "%s line %d:\n%s" % (
      page,
      line,
      proc.stdout[-4000:],
  )
