#!/usr/bin/env bash
# miniai's one test command (the README names it): run from anywhere as `bash tools/test.sh`.
#  1. nbdev_export, then fail if that changed the library, or if miniai/ has changes git doesn't have (new or
#     modified, unstaged files): notebooks, miniai/ and git must agree (MINIAI_ALLOW_DIRTY=1: warn only);
#  2. the pytest suite in tests/ (which always runs on the small sample shipped with miniai);
#  3. every notebook, in quick mode (MINIAI_QUICK=1: the shipped sample instead of the full data);
#  4. the documentation site: tools/docs_check.py builds _docs/ (tools/build_docs.py: nbdev's notebook processing,
#     then Sphinx, offline) and checks it in headless Chromium (Debian's `chromium`, which .ci/run installs).
#     MINIAI_DOCS=0 skips it.
# Exits non-zero as soon as any step fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export MPLBACKEND=Agg

echo '=== 1/4 nbdev_export: are the notebooks and miniai/ in sync?'
snapshot() { find miniai -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha1sum; }
before=$(snapshot)
nbdev_export
if ! exported=$(diff <(echo "$before") <(snapshot)); then
  echo "$exported"
  echo 'FAIL: notebooks and library out of sync: nbdev_export changed the files above. Run nbdev_export and commit' \
       'the result (edit the notebooks, never miniai/*.py by hand).' >&2
  exit 1
fi
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Lines whose second status column is not blank: files changed in the working tree, or untracked ones. Changes
  # that are only staged (new files not committed yet) don't count: they match what is staged to be committed.
  changed=$(git status --porcelain --untracked-files=all -- miniai | grep -v '^. ' || true)
  if [[ -n "$changed" ]]; then
    echo "$changed"
    if [[ "${MINIAI_ALLOW_DIRTY:-0}" == 1 ]]; then
      echo 'WARNING: miniai/ has changes git does not have (MINIAI_ALLOW_DIRTY=1, so going on); CI will fail on them.' >&2
    else
      echo 'FAIL: notebooks and library out of sync: miniai/ differs from what git has. Run nbdev_export and commit' \
           '(or stage) the result; MINIAI_ALLOW_DIRTY=1 makes this a warning while you work.' >&2
      exit 1
    fi
  else
    echo 'in sync'
  fi
else
  echo 'not a git checkout: skipping the git part of the sync check' >&2
fi

echo '=== README.md is generated from nbs/index.ipynb'
python tools/make_readme.py --check
echo 'up to date'

echo '=== 2/4 pytest'
python -m pytest -q tests

echo '=== 3/4 nbdev_test, MINIAI_QUICK=1'
timing=()
if nbdev_test --help 2>/dev/null | grep -q -- '--timing'; then timing=(--timing); fi
# Two notebooks at a time, one PyTorch thread each: two processes with two threads each on a 2-core machine
# oversubscribe it, and PyTorch's threads then spend most of their time waiting for each other (10x slower here).
MINIAI_QUICK=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" nbdev_test --n_workers 2 "${timing[@]}"

echo '=== 4/4 docs: tools/build_docs.py + headless Chromium (tools/docs_check.py)'
if [[ "${MINIAI_DOCS:-1}" == 0 ]]; then
  echo 'skipped: MINIAI_DOCS=0'
else
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python tools/docs_check.py
fi

echo 'all tests passed'
