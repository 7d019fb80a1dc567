"""The board as a system: a Debian 12 image built from Debian's packages, booted under QEMU (TCG),
installed with scripts/install.sh, then power-cut, starved and throttled (issue #12).

Run it with `./scripts/systemtest` (see docs/systemtest.md). Nothing here runs in the unit tests.
"""
