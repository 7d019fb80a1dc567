"""Messages a technician reads, in Vietnamese under a `vi_VN` locale (GNU gettext catalogues).

English is the source language and the default. The catalogue is `agent/locale/vi/LC_MESSAGES/
bangtin-agent.po`, compiled to the `.mo` beside it (both ship in the wheel); tests/test_i18n.py
fails when a marked message has no translation or the `.mo` is older than the `.po`.

What is translated: what a person reads at a terminal or on the splash — `check-config`'s
problems and warnings, `ctl status` and `ctl`'s errors, `report`'s table, the splash's footer.
What is not: config key names, JSON field names, CSV headers, `--json` output, and everything
the running agent logs or reports upstream (`errors` in status and heartbeats): the province and
`journalctl` searches read those, whatever the board's locale. So the CLI turns translation on for
its own commands (`use`) and `run` leaves it off; the splash gets its own `translations(...)`.

`_` marks a message and translates it now; `N_` only marks one that is translated where it is used.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

DOMAIN = "bangtin-agent"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "vi")

_active: gettext.NullTranslations = gettext.NullTranslations()


def language(environ: Mapping[str, str] | None = None) -> str:
    """"vi" when the message locale is Vietnamese (`vi_VN.UTF-8`, `vi_VN`, `vi`), else "en".

    POSIX order: the first of LC_ALL, LC_MESSAGES, LANG that is set decides."""
    env = os.environ if environ is None else environ
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(variable)
        if value:
            name = value.split(".")[0].split("@")[0]
            return "vi" if name == "vi" or name.startswith("vi_") else "en"
    return "en"


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalogue for `lang`; English (the messages as written) for anything else."""
    if lang == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)


def use(lang: str) -> None:
    """Translate `_` messages into `lang` from now on (the CLI's person-facing commands)."""
    global _active
    _active = translations(lang)


def _(message: str) -> str:
    return _active.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    return _active.ngettext(singular, plural, count)


def N_(message: str) -> str:
    """Mark a message for the catalogue without translating it here."""
    return message
