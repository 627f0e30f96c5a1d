#!/usr/bin/env bash
# Run the suite; "no tests collected" (pytest exit 5) is a failure, not a pass.
set -u
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
