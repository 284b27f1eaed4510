"""The measured stages: ours against its raw-SQL baseline, one fresh process each.

Every measurement runs in a process of its own, so its peak RSS (``VmHWM``) is
that stage's alone and no stage inherits another's heap or caches: baselines
in a new interpreter (``python -m bench.stages child SPEC``), ours forked by
multiprocessing's fork server after it has imported Prefect and our tasks (importing them takes
seconds here, and a flow-run process imports them once, too). The child times
only the stage itself and writes one JSON result.

- snapshot: ``take_media_snapshot.fn`` vs ``COPY (SELECT row_to_json(...) ...)
  TO STDOUT`` of the same rows (images, links, thumbnails) to a file;
- verify: ``verify_media_snapshot.fn`` vs reading that file back (sha256 and
  ``COPY ... FROM`` into a ``json`` temp table); its target is relative to our
  snapshot;
- purge: ``apply_media_purge.fn`` vs ``sql/purge-product-media.sql`` with its
  last line edited to COMMIT (``psql -f``; the same statements through psycopg
  where psql is missing);
- restore: ``apply_media_restore.fn`` vs ``COPY image/links FROM`` the rows the
  purge removed plus the thumbnail UPDATEs, one transaction;
- reset: ``apply_site_reset.fn`` vs the same DELETEs/UPDATEs as one transaction.

``Runner`` holds one size's databases and files and restores the state every
stage expects (full catalog, fresh CMS copy) between measurements, untimed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import generate as gen

ROOT = Path(__file__).resolve().parent.parent
PURGE_SQL = ROOT / "sql" / "purge-product-media.sql"
STAGES = ("snapshot", "verify", "purge", "restore", "reset")
VARIANTS = ("ours", "baseline")


# ================================================================ child side


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _approval() -> Any:
    from safeops.core.models import Approval

    return Approval(approver="bench", reason="benchmark", via="saved-plan")


def op_snapshot_ours(a: dict[str, Any]) -> dict[str, Any]:
    from tasks.media.snapshot import take_media_snapshot

    ref = take_media_snapshot.fn("medusa", a["location"])
    return {"uri": ref.uri, "totals": ref.totals, "bytes": Path(ref.uri).stat().st_size}


BASELINE_SNAPSHOT_SQL = """
COPY (
    SELECT row_to_json(i) FROM image i
    UNION ALL SELECT row_to_json(l) FROM product_variant_product_image l
    UNION ALL SELECT json_build_object('id', p.id, 'thumbnail', p.thumbnail)
              FROM product p WHERE p.thumbnail IS NOT NULL
    UNION ALL SELECT json_build_object('id', v.id, 'thumbnail', v.thumbnail)
              FROM product_variant v WHERE v.thumbnail IS NOT NULL AND v.product_id IS NOT NULL
) TO STDOUT"""


def op_snapshot_baseline(a: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(os.environ["MEDUSA_DATABASE_URL"]) as conn, open(a["path"], "wb") as out:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with conn.cursor() as cur, cur.copy(BASELINE_SNAPSHOT_SQL) as copy:
            for chunk in copy:
                out.write(chunk)
        conn.rollback()
    return {"path": a["path"], "bytes": Path(a["path"]).stat().st_size}


def op_verify_ours(a: dict[str, Any]) -> dict[str, Any]:
    from tasks.media.verify import verify_media_snapshot

    report = verify_media_snapshot.fn("medusa", a["uri"])
    if not report.ok:
        raise RuntimeError(f"verify failed: {report.failures()}")
    return {"totals": report.totals}


def op_verify_baseline(a: dict[str, Any]) -> dict[str, Any]:
    sha = hashlib.sha256()
    with psycopg.connect(os.environ["MEDUSA_DATABASE_URL"]) as conn:
        conn.execute("CREATE TEMP TABLE _bench_readback (doc json) ON COMMIT DROP")
        with (
            conn.cursor() as cur,
            cur.copy("COPY _bench_readback (doc) FROM STDIN") as copy,
            open(a["path"], "rb") as src,
        ):
            while chunk := src.read(1 << 20):
                sha.update(chunk)
                copy.write(chunk)
        row = conn.execute("SELECT count(*) FROM _bench_readback").fetchone()
        conn.rollback()
    return {"rows": int(row[0]) if row else 0, "sha256": sha.hexdigest()}


def op_purge_ours(a: dict[str, Any]) -> dict[str, Any]:
    from tasks.media.purge import apply_media_purge

    applied = apply_media_purge.fn(
        "medusa",
        a["uri"],
        a["plan_hash"],
        _approval(),
        datetime.now(UTC),
        verified_sha256=a["file_sha256"],
        verified_plan_hash=a["plan_hash"],
    )
    return {"applied": applied}


def committed_purge_sql() -> str:
    """The shipped fallback with its last line edited to COMMIT, as the README says."""
    body = PURGE_SQL.read_text()
    edited = re.sub(r"^ROLLBACK;$", "COMMIT;", body, flags=re.MULTILINE)
    if edited == body:
        raise RuntimeError(f"{PURGE_SQL} does not end in ROLLBACK; any more")
    return edited


def _without_meta_commands(script: str) -> str:
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("\\"))


def op_purge_baseline(a: dict[str, Any]) -> dict[str, Any]:
    url = os.environ["MEDUSA_DATABASE_URL"]
    psql = shutil.which("psql")
    if psql:
        subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", a["script"], url],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return {"via": "psql"}
    with psycopg.connect(url, autocommit=True) as conn:  # same statements, no psql here
        conn.execute(_without_meta_commands(Path(a["script"]).read_text()).encode())
    return {"via": "psycopg"}


def prepare_restore_ours(a: dict[str, Any]) -> None:
    """The plan a live restore applies (the flow plans right before applying, too)."""
    if not a.get("plan_hash"):
        from tasks.media.restore import plan_media_restore

        a["plan_hash"] = plan_media_restore.fn("medusa", a["uri"], False).plan_hash


def op_restore_ours(a: dict[str, Any]) -> dict[str, Any]:
    from tasks.media.restore import apply_media_restore

    applied = apply_media_restore.fn(
        "medusa", a["uri"], False, a["plan_hash"], _approval(), datetime.now(UTC)
    )
    return {"applied": applied, "plan_hash": a["plan_hash"]}


def raw_restore(url: str, files: dict[str, str]) -> None:
    """``COPY ... FROM`` of the rows a purge removed, thumbnails back, one transaction."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, key in (("image", "image"), ("product_variant_product_image", "links")):
            with open(files[key], "rb") as src, cur.copy(f"COPY {table} FROM STDIN") as copy:
                while chunk := src.read(1 << 20):
                    copy.write(chunk)
        for table, key in (("product", "product_thumbs"), ("product_variant", "variant_thumbs")):
            cur.execute(f"CREATE TEMP TABLE _t_{key} (id text, thumbnail text) ON COMMIT DROP")
            with open(files[key], "rb") as src, cur.copy(f"COPY _t_{key} FROM STDIN") as copy:
                while chunk := src.read(1 << 20):
                    copy.write(chunk)
            cur.execute(
                f"UPDATE {table} x SET thumbnail = t.thumbnail, updated_at = now() "
                f"FROM _t_{key} t WHERE x.id = t.id AND x.thumbnail IS NULL"
            )
        conn.commit()


def op_restore_baseline(a: dict[str, Any]) -> dict[str, Any]:
    raw_restore(os.environ["MEDUSA_DATABASE_URL"], a["files"])
    return {}


def op_reset_ours(a: dict[str, Any]) -> dict[str, Any]:
    from tasks.site.reset import apply_site_reset

    deleted = apply_site_reset.fn(
        "cms", a["site"], a["uri"], a["plan_hash"], a["file_sha256"], _approval(), datetime.now(UTC)
    )
    return {"deleted": deleted}


CATEGORIES = "SELECT id FROM terms WHERE site_id = %(site)s AND type = 'category'"
AUTHORS = "SELECT id FROM authors WHERE site_id = %(site)s"
PAGES = "SELECT id FROM content WHERE site_id = %(site)s AND type = 'page'"
BASELINE_RESET_SQL = [
    f"""DELETE FROM seo_meta t WHERE
        (t.entity_type = 'term' AND t.entity_id IN ({CATEGORIES}))
        OR (t.entity_type = 'author' AND t.entity_id IN ({AUTHORS}))
        OR (t.entity_type = 'content' AND t.entity_id IN ({PAGES}))""",
    f"""UPDATE terms t SET parent_id = NULL WHERE t.parent_id IN ({CATEGORIES})
        AND NOT (t.site_id = %(site)s AND t.type = 'category')""",
    f"DELETE FROM content_terms t WHERE t.term_id IN ({CATEGORIES}) OR t.content_id IN ({PAGES})",
    "DELETE FROM content WHERE site_id = %(site)s AND type = 'page'",
    "DELETE FROM terms WHERE site_id = %(site)s AND type = 'category'",
    "DELETE FROM authors WHERE site_id = %(site)s",
    "DELETE FROM content_type WHERE site_id = %(site)s",
    "UPDATE sites SET active_blueprint_version = NULL, setup_status = 'draft' WHERE id = %(site)s",
]


def op_reset_baseline(a: dict[str, Any]) -> dict[str, Any]:
    counts = []
    with psycopg.connect(os.environ["CMS_DATABASE_URL"]) as conn:
        for statement in BASELINE_RESET_SQL:
            counts.append(conn.execute(statement, {"site": a["site"]}).rowcount)
        conn.commit()
    return {"rowcounts": counts}


# Untimed setup that needs our code, in a process of its own too.


def op_setup(a: dict[str, Any]) -> dict[str, Any]:
    """The media snapshot and purge plan every purge applies, and the site's reset plan."""
    from tasks.media.purge import plan_media_purge
    from tasks.media.snapshot import take_media_snapshot
    from tasks.media.verify import verify_media_snapshot
    from tasks.site.snapshot import snapshot_site, verify_site_snapshot

    ref = take_media_snapshot.fn("medusa", a["location"])
    report = verify_media_snapshot.fn("medusa", ref.uri)  # what the flow hands the apply
    plan = plan_media_purge.fn("medusa")
    if not report.ok or plan.plan_hash != report.plan_hash:
        raise RuntimeError(f"setup snapshot does not verify: {report.failures()}")
    site_ref, site_plan = snapshot_site.fn("cms", a["site"], a["location"])
    # The flows verify before their approval; the applies are handed what that verify saw.
    site_verified = verify_site_snapshot.fn("cms", site_ref.uri, site_plan.plan_hash)
    return {
        "media": {
            "uri": ref.uri,
            "plan_hash": plan.plan_hash,
            "counts": plan.counts,
            "file_sha256": report.file_sha256,
        },
        "cms": {
            "uri": site_ref.uri,
            "plan_hash": site_plan.plan_hash,
            "file_sha256": site_verified.file_sha256,
            "counts": site_plan.counts,
        },
    }


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "snapshot.ours": op_snapshot_ours,
    "snapshot.baseline": op_snapshot_baseline,
    "verify.ours": op_verify_ours,
    "verify.baseline": op_verify_baseline,
    "purge.ours": op_purge_ours,
    "purge.baseline": op_purge_baseline,
    "restore.ours": op_restore_ours,
    "restore.baseline": op_restore_baseline,
    "reset.ours": op_reset_ours,
    "reset.baseline": op_reset_baseline,
    "setup": op_setup,
}
PREPARE: dict[str, Callable[[dict[str, Any]], None]] = {"restore.ours": prepare_restore_ours}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    op = OPS[spec["op"]]
    if spec["op"].endswith(".ours") or spec["op"] == "setup":
        # Imports happen before the clock starts, as they do once per flow-run process:
        # our modules, and the SQLAlchemy dialect the first engine would load.
        import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    if spec["op"] in PREPARE:
        PREPARE[spec["op"]](spec["args"])
    rss_start = _status_kb("VmRSS")
    profiler = None
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    started = time.perf_counter()
    result = op(spec["args"])
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=True, show_all=False))
    import resource

    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    Path(spec["out"]).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "rss_start_mb": rss_start / 1024,
                "peak_rss_mb": max(_status_kb("VmHWM"), children_kb) / 1024,
                "result": result,
            },
            default=str,
        )
    )


# ================================================================ parent side


@dataclass
class Measurement:
    stage: str
    variant: str
    rep: int
    seconds: float
    peak_rss_mb: float
    rss_start_mb: float
    result: dict[str, Any] = field(default_factory=dict)


class ChildFailed(RuntimeError):
    pass


class Zygote:
    """Ours run in children of the standard library's fork server, which imports our
    code once (``set_forkserver_preload``) and forks a fresh child per measurement.

    Importing Prefect and our tasks takes seconds; a forked child starts with
    those modules already in memory, exactly as a fresh process that imported
    them would (same RSS), and exits after one stage, so stages still share
    nothing. Its ``VmHWM`` is its own: the kernel starts a forked child's peak
    at its RSS at the fork, not at the parent's peak (checked on Linux 6.18: a
    server that had touched 400 MB, then freed it, forks children reporting
    9-12 MB). Baselines never import our code, so they run as plain processes.

    The server is one per parent process and keeps the environment it started
    with (Prefect reads its settings at import), while each size has its own
    databases and Prefect home: so it is started under this size's environment
    and stopped with it (``_stop`` is private to multiprocessing, but the only
    way to start a second server with another environment)."""

    PRELOAD = (
        "sqlalchemy.dialects.postgresql.psycopg",
        "tasks.media.purge",
        "tasks.media.restore",
        "tasks.media.snapshot",
        "tasks.media.verify",
        "tasks.site.reset",
        "tasks.site.restore",
        "bench.stages",
    )

    def __init__(self, env: dict[str, str]) -> None:
        import multiprocessing
        import multiprocessing.forkserver

        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(self.PRELOAD))
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(env)
        os.chdir(ROOT)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)

    def run(self, spec: Path) -> int:
        child = self.ctx.Process(target=_forked_child, args=(str(spec),))
        child.start()
        child.join()
        return child.exitcode if child.exitcode is not None else 1

    def close(self) -> None:
        import multiprocessing.forkserver

        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


def _forked_child(spec: str) -> None:
    os.dup2(2, 1)  # the parent's stdout holds its tables; the child's prints go to stderr
    os.chdir(ROOT)
    child_main(spec)


def run_child(
    op: str,
    args: dict[str, Any],
    env: dict[str, str],
    workdir: Path,
    profile: Path | None = None,
    timeout: int = 3600,
    zygote: Zygote | None = None,
) -> dict[str, Any]:
    spec_dir = workdir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{op}-{time.monotonic_ns()}"
    out = spec_dir / f"{stamp}.out.json"
    spec = spec_dir / f"{stamp}.json"
    spec.write_text(
        json.dumps(
            {"op": op, "args": args, "out": str(out), "profile": str(profile) if profile else None}
        )
    )
    if zygote is not None:
        code, tail = zygote.run(spec), "(see the stderr above)"
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.stages", "child", str(spec)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        code = proc.returncode
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    if code != 0 or not out.exists():
        raise ChildFailed(f"{op} failed (exit {code}):\n{tail}")
    data: dict[str, Any] = json.loads(out.read_text())
    spec.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    return data


def clean_environment() -> dict[str, str]:
    """This process's environment without any Prefect or safeops setting or database URL:
    what the bench measures sets its own."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "SAFEOPS_")) and not k.endswith("_DATABASE_URL")
    }


def child_env(medusa_url: str, cms_url: str, workdir: Path) -> dict[str, str]:
    env = clean_environment()
    env.update(
        {
            "MEDUSA_DATABASE_URL": medusa_url,
            "CMS_DATABASE_URL": cms_url,
            "SAFEOPS_SNAPSHOT_URI": str(workdir / "snapshots"),
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _copy_out(url: str, sql: str, path: Path) -> None:
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        open(path, "wb") as out,
        cur.copy(f"COPY ({sql}) TO STDOUT") as copy,
    ):
        for chunk in copy:
            out.write(chunk)


class Runner:
    """One size: its databases, setup artefacts and the state between measurements."""

    def __init__(
        self,
        admin_url: str,
        images: int,
        seo_rows: int,
        workdir: Path,
        log: Callable[[str], None],
        profile_dir: Path | None = None,
    ) -> None:
        self.admin_url = admin_url
        self.images = images
        self.k = max((seo_rows + 2) // 3, 5)
        self.workdir = workdir
        self.log = log
        self.profile_dir = profile_dir
        self.medusa_db = gen.new_database_name("medusa")
        self.medusa_template = gen.new_database_name("medusatpl")
        self.cms_template = gen.new_database_name("cmstpl")
        self.cms_db = gen.new_database_name("cms")
        self.medusa_url = gen.database_url(admin_url, self.medusa_db)
        self.cms_url = gen.database_url(admin_url, self.cms_db)
        self.env = child_env(self.medusa_url, self.cms_url, workdir)
        self.data: dict[str, Any] = {}
        self.files: dict[str, str] = {}
        self.baseline_file: str | None = None
        self.restore_plan_hash: str | None = None
        self.zygote: Zygote | None = None

    # ------------------------------------------------------------ setup / teardown

    def setup(self) -> None:
        (self.workdir / "snapshots").mkdir(parents=True, exist_ok=True)
        gen.create_database(self.admin_url, self.medusa_db)
        g = gen.generate_medusa(self.medusa_url, self.images)
        self.log(f"  medusa: {g.counts} in {g.seconds:.1f} s")
        self.data["medusa"] = {**g.counts, "generate_seconds": round(g.seconds, 2)}
        # The catalog as every stage's first repetition finds it, for the flows
        # (fresh_medusa): the stages leave it purged and restored several times over.
        gen.create_database(self.admin_url, self.medusa_template, template=self.medusa_db)
        self._create_audit_table(gen.database_url(self.admin_url, self.medusa_template))
        gen.create_database(self.admin_url, self.cms_template)
        template_url = gen.database_url(self.admin_url, self.cms_template)
        c = gen.generate_cms(template_url, self.k)
        self._try_prewarm_extension(template_url)
        self._create_audit_table(template_url)
        self.log(f"  cms: {c.counts} in {c.seconds:.1f} s")
        self.data["cms"] = {**c.counts, "generate_seconds": round(c.seconds, 2)}
        self.site = gen.bench_site_id(template_url)

        self.fresh_cms()
        self.zygote = Zygote(self.env)
        setup = run_child(
            "setup",
            {"location": str(self.workdir / "snapshots"), "site": self.site},
            self.env,
            self.workdir,
            zygote=self.zygote,
        )["result"]
        self.media, self.cms = setup["media"], setup["cms"]
        for key, sql in (
            ("image", "SELECT * FROM image"),
            ("links", "SELECT * FROM product_variant_product_image"),
            ("product_thumbs", "SELECT id, thumbnail FROM product WHERE thumbnail IS NOT NULL"),
            (
                "variant_thumbs",
                "SELECT id, thumbnail FROM product_variant "
                "WHERE thumbnail IS NOT NULL "
                "AND product_id IS NOT NULL",
            ),
        ):
            path = self.workdir / f"restore-{key}.copy"
            _copy_out(self.medusa_url, sql, path)
            self.files[key] = str(path)
        script = self.workdir / "purge-product-media-commit.sql"
        script.write_text(committed_purge_sql())
        self.purge_script = str(script)

    def teardown(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
        for name in (self.medusa_db, self.medusa_template, self.cms_db, self.cms_template):
            try:
                gen.drop_database(self.admin_url, name)
            except Exception as exc:  # keep tearing down the others
                self.log(f"  could not drop {name}: {exc}")

    @staticmethod
    def _create_audit_table(url: str) -> None:
        """Steady state: a target has safeops' audit table from its first apply on, and
        every reset repetition starts from a fresh copy of this template, so without it
        each one would time the one-off CREATE SCHEMA/TABLE (tens of ms) too."""
        from importlib.resources import files

        ddl = files("safeops.schemas").joinpath("audit.sql").read_text()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl.encode())

    @staticmethod
    def _try_prewarm_extension(url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error:
            pass

    # ------------------------------------------------------------ state between runs

    def settle_medusa(self) -> None:
        gen.vacuum(self.medusa_url, gen.MEDUSA_TABLES)
        gen.checkpoint(self.medusa_url)

    def fresh_medusa(self) -> None:
        """The generated catalog again, for the whole jobs and their raw procedures.

        The flows run after every stage, and the purge and restore stages leave the
        catalog deleted and re-inserted several times over (rows in another physical
        order, indexes grown): at 1M images the purge's dry run took 10.1 s there
        and 7.1 s on the generated catalog. The jobs and the raw procedures they are
        compared with (time_raw_procedures) both start from this copy."""
        gen.create_database(self.admin_url, self.medusa_db, template=self.medusa_template)
        self.settle_medusa()

    def raw_purge(self) -> None:
        with psycopg.connect(self.medusa_url, autocommit=True) as conn:
            conn.execute(_without_meta_commands(committed_purge_sql()).encode())

    def raw_restore(self) -> None:
        raw_restore(self.medusa_url, self.files)

    def fresh_cms(self) -> None:
        """A byte-identical copy of the generated CMS, its pages in shared buffers."""
        gen.create_database(self.admin_url, self.cms_db, template=self.cms_template)
        with psycopg.connect(self.cms_url, autocommit=True) as conn:
            try:
                conn.execute(
                    "SELECT pg_prewarm(c.oid) FROM pg_class c "
                    "WHERE c.relnamespace = 'public'::regnamespace "
                    "AND c.relkind IN ('r', 'i')"
                )
            except psycopg.Error:
                for table in gen.CMS_TABLES:
                    conn.execute(f"SELECT count(*) FROM {table}")
            conn.execute("CHECKPOINT")

    # ------------------------------------------------------------ one measurement

    def _measure(self, stage: str, variant: str, rep: int, args: dict[str, Any]) -> Measurement:
        profile = None
        if self.profile_dir is not None and variant == "ours":
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            profile = self.profile_dir / f"{stage}-{self.images}-rep{rep}.txt"
        data = run_child(
            f"{stage}.{variant}",
            args,
            self.env,
            self.workdir,
            profile,
            zygote=self.zygote if variant == "ours" else None,
        )
        m = Measurement(
            stage,
            variant,
            rep,
            data["seconds"],
            data["peak_rss_mb"],
            data["rss_start_mb"],
            data.get("result") or {},
        )
        self.log(
            f"    {stage:8s} {variant:8s} rep {rep}: {m.seconds:8.3f} s  "
            f"peak {m.peak_rss_mb:6.1f} MB"
        )
        return m

    def measure(self, stage: str, variant: str, rep: int) -> Measurement:
        snapshots = str(self.workdir / "snapshots")
        if stage == "snapshot":
            gen.checkpoint(self.medusa_url)
            if variant == "ours":
                m = self._measure(stage, variant, rep, {"location": snapshots})
                Path(m.result["uri"]).unlink(missing_ok=True)
            else:
                path = str(self.workdir / "baseline-snapshot.jsonl")
                m = self._measure(stage, variant, rep, {"path": path})
                self.baseline_file = path
            return m
        if stage == "verify":
            gen.checkpoint(self.medusa_url)
            if variant == "ours":
                return self._measure(stage, variant, rep, {"uri": self.media["uri"]})
            if self.baseline_file is None:
                self.baseline_file = str(self.workdir / "baseline-snapshot.jsonl")
                run_child("snapshot.baseline", {"path": self.baseline_file}, self.env, self.workdir)
            return self._measure(stage, variant, rep, {"path": self.baseline_file})
        if stage == "purge":
            gen.checkpoint(self.medusa_url)
            if variant == "ours":
                m = self._measure(
                    stage,
                    variant,
                    rep,
                    {
                        "uri": self.media["uri"],
                        "plan_hash": self.media["plan_hash"],
                        "file_sha256": self.media["file_sha256"],
                    },
                )
            else:
                m = self._measure(stage, variant, rep, {"script": self.purge_script})
            self.raw_restore()
            self.settle_medusa()
            return m
        if stage == "restore":
            self.raw_purge()
            self.settle_medusa()
            if variant == "ours":
                m = self._measure(
                    stage,
                    variant,
                    rep,
                    {"uri": self.media["uri"], "plan_hash": self.restore_plan_hash},
                )
                self.restore_plan_hash = m.result["plan_hash"]  # same for every repetition
            else:
                m = self._measure(stage, variant, rep, {"files": self.files})
            self.settle_medusa()
            return m
        if stage == "reset":
            self.fresh_cms()
            if variant == "ours":
                return self._measure(
                    stage,
                    variant,
                    rep,
                    {
                        "site": self.site,
                        "uri": self.cms["uri"],
                        "plan_hash": self.cms["plan_hash"],
                        "file_sha256": self.cms["file_sha256"],
                    },
                )
            return self._measure(stage, variant, rep, {"site": self.site})
        raise ValueError(stage)


# ================================================================ flows: task runs


def op_count_flows(a: dict[str, Any]) -> dict[str, Any]:
    """Run the real flows once each and count the task runs Prefect records."""
    from safeops.core.prefect_env import apply_offline_defaults

    apply_offline_defaults()
    from contextlib import nullcontext

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.media_purge import purge_product_media
    from flows.media_restore import restore_product_media
    from flows.media_snapshot import snapshot_product_media
    from flows.media_verify import verify_product_media_snapshot
    from flows.site_reset import reset_site_structure
    from flows.site_restore import restore_site_structure
    from tasks.media.purge import plan_media_purge
    from tasks.media.restore import plan_media_restore
    from tasks.site.restore import plan_site_restore
    from tasks.site.snapshot import snapshot_site

    harness: Any = nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    location = a["location"]
    out: dict[str, Any] = {}

    def count(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        state = call()
        seconds = time.perf_counter() - started
        run_id = state.state_details.flow_run_id
        value = state.result()
        n, stable = -1, 0
        with get_client(sync_client=True) as client:
            for _ in range(120):  # task runs are recorded asynchronously
                runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
                )
                stable = stable + 1 if len(runs) == n else 0
                n = len(runs)
                if stable >= 2:
                    break
                time.sleep(0.2)
            names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
            flow_run = client.read_flow_run(run_id)
        # The run as Prefect records it (start to final state): the wall time above
        # also holds the engine joining its heartbeat thread after the final state,
        # which sleeps in whole seconds (README, "Whole jobs").
        recorded = None
        if flow_run.start_time is not None and flow_run.end_time is not None:
            recorded = round((flow_run.end_time - flow_run.start_time).total_seconds(), 3)
        out[name] = {
            "task_runs": n,
            "seconds": round(seconds, 3),
            "recorded_seconds": recorded,
            "state": state.type.value,
            "tasks": names,
        }
        return value

    with harness:
        ref = count(
            "snapshot-product-media",
            lambda: snapshot_product_media(snapshot_location=location, return_state=True),
        )
        count(
            "verify-product-media-snapshot",
            lambda: verify_product_media_snapshot(ref.uri, return_state=True),
        )
        count(
            "purge-product-media (dry run)",
            lambda: purge_product_media(snapshot_location=location, return_state=True),
        )
        plan = plan_media_purge.fn("medusa")
        purged = count(
            "purge-product-media (live)",
            lambda: purge_product_media(
                dry_run=False,
                approved_plan_hash=plan.plan_hash,
                approved_by="bench",
                snapshot_location=location,
                return_state=True,
            ),
        )
        rplan = plan_media_restore.fn("medusa", purged.snapshot_uri, False)
        count(
            "restore-product-media (live)",
            lambda: restore_product_media(
                purged.snapshot_uri,
                dry_run=False,
                approved_plan_hash=rplan.plan_hash,
                approved_by="bench",
                return_state=True,
            ),
        )
        _, splan = snapshot_site.fn("cms", a["site"], location)
        reset = count(
            "reset-site-structure (live)",
            lambda: reset_site_structure(
                a["site"],
                dry_run=False,
                approved_plan_hash=splan.plan_hash,
                approved_by="bench",
                snapshot_location=location,
                return_state=True,
            ),
        )
        _, _, sr_plan = plan_site_restore.fn("cms", reset.snapshot_uri, False)
        count(
            "restore-site-structure (live)",
            lambda: restore_site_structure(
                reset.snapshot_uri,
                dry_run=False,
                approved_plan_hash=sr_plan.plan_hash,
                approved_by="bench",
                return_state=True,
            ),
        )
    return out


OPS["flows.count"] = op_count_flows


def time_raw_procedures(runner: Runner) -> dict[str, float]:
    """The raw procedures the whole jobs replace (bench/jobs.py), timed in the state the
    flows then start from: the generated catalog and site, each procedure run after the
    one before it as the flows do (snapshot, purge, restore of what was purged; the
    site's deletes). The stage baselines are medians over a catalog the stages have
    purged and restored several times over (rows in another physical order, indexes
    grown: 4.3 s for the 1M snapshot `COPY` there, 3.9 s on the generated one), so
    pricing the flows with them would compare two states."""
    runner.fresh_medusa()
    runner.fresh_cms()
    path = runner.workdir / "raw-procedure-snapshot.jsonl"
    steps = (
        ("snapshot", "snapshot.baseline", {"path": str(path)}),
        ("purge", "purge.baseline", {"script": runner.purge_script}),
        ("restore", "restore.baseline", {"files": runner.files}),
        ("reset", "reset.baseline", {"site": runner.site}),
    )
    seconds: dict[str, float] = {}
    try:
        for name, op, args in steps:
            seconds[name] = run_child(op, args, runner.env, runner.workdir)["seconds"]
    finally:
        path.unlink(missing_ok=True)
    return seconds


def count_task_runs(runner: Runner, prefect_api_url: str | None) -> dict[str, Any]:
    env = dict(runner.env)
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    runner.fresh_medusa()
    runner.fresh_cms()
    data = run_child(
        "flows.count",
        {"location": str(runner.workdir / "snapshots"), "site": runner.site},
        env,
        runner.workdir,
    )
    runner.settle_medusa()
    result: dict[str, Any] = data["result"]
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child_main(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.stages child SPEC.json (run by bench/__main__.py)")
