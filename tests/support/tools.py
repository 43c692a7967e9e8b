"""Programs some tests need from the system (Debian packages that
scripts/test.sh installs): missing, a test skips, except under CI=true
where it fails."""

from __future__ import annotations

import os
import shutil

import pytest


def required(*names: str, package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    reason = f"{names[0]} is not installed (apt-get install {package})"
    if os.environ.get("CI"):  # as the Postfix tests: CI=true in the CI
        pytest.fail(f"{names[0]} is required in CI: {reason}")
    pytest.skip(reason)
