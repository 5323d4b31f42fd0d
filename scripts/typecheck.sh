#!/usr/bin/env bash
# mypy over src/ as a ratchet: the number of errors and the number of "# type: ignore" comments
# may only go down. The ceilings live in .ci/typecheck_ceiling ("errors ignores"); lower them
# when you remove some. Unused ignores are errors (warn_unused_ignores in pyproject.toml).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
read -r max_errors max_ignores < .ci/typecheck_ceiling
out=$("$py" -m mypy src 2>&1)
errors=$(printf '%s\n' "$out" | grep -c ': error:')
ignores=$(grep -rE --include='*.py' -c '# type: ignore' src | awk -F: '{s += $2} END {print s + 0}')
printf '%s\n' "$out" | grep ': error:' | head -50
echo "typecheck: mypy errors $errors (ceiling $max_errors), '# type: ignore' comments $ignores (ceiling $max_ignores)"
if [ "$errors" -gt "$max_errors" ] || [ "$ignores" -gt "$max_ignores" ]; then
    echo "typecheck: FAILED - more than the ceiling; fix the new ones (or lower nothing and explain in review)" >&2
    exit 1
fi
