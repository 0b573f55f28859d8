"""The PostgreSQL store's SQL, one statement per ``.sql`` file of this package, loaded by name and cached.

Every value reaches the database bound (``%(name)s``), never written into the text: the files hold the
fixed parts only, with the schema ``aweber_job`` spelled out, under a heading comment that says what the
statement is for. A ``%`` outside a placeholder, even in a
comment, would be read as one: none of the files holds any.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def load(name: str) -> str:
    """The statement of ``<name>.sql`` in this package, without its heading comment (read once per process).

    The heading is for readers of the file: the server, its logs and pg_stat_activity get the statement alone.
    """
    lines = resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8").splitlines()
    while lines and lines[0].startswith("--"):
        del lines[0]
    return "\n".join(lines).strip()
