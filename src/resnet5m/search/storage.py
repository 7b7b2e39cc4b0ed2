"""Where a study lives: an Optuna RDB storage (SQLite in the study folder by default, or any SQLAlchemy
URL such as ``postgresql://user@host/db``), with heartbeats so a killed worker's trial is failed and
retried instead of staying RUNNING forever."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from resnet5m.errors import UserError
from resnet5m.reporting.search_report import driver_url

DB_FILE = "study.db"
HEARTBEAT_S = 10  # a worker writes a heartbeat for its running trial this often
GRACE_S = 30  # a RUNNING trial whose heartbeat is older than this is failed (and retried) by the next worker
MAX_RETRY = 2  # a trial killed this many times is given up (left FAIL)


def quiet_optuna() -> None:
    """Our own one-line messages replace Optuna's INFO log and its experimental-feature warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # not "Trial N failed" + traceback: we say it in one line
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / DB_FILE).resolve()}"


def display_url(url: str) -> str:
    """The URL with any password masked (for messages and search.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S,
                 max_retry: int = MAX_RETRY) -> Any:
    """An ``optuna.storages.RDBStorage`` with heartbeats and retries of killed trials; a bad or unreachable
    URL is a one-line :class:`UserError`."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    quiet_optuna()
    shown = display_url(url)
    if "://" not in url:
        raise UserError(f"--storage {shown}: not a database URL (e.g. sqlite:///path/study.db or "
                        "postgresql://user@host:5432/db)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several local workers wait for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
        return RDBStorage(driver_url(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                          grace_period=grace_s, heartbeat_stale_trial_callback=retry)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"--storage {shown}: the database driver is not installed ({exc.name or exc}); for "
                        "PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy.exc.* / optuna errors: the URL or the server is wrong
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"--storage {shown}: cannot open ({type(exc).__name__}: {first})") from None
