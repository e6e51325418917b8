"""The load harness at CI size: every client request succeeds while users are migrated online.

Latency figures are printed, not asserted (speed belongs to the benchmark run in the README).
"""

from __future__ import annotations

import json

import psycopg

from pytest_rolemig.tools import load


def test_clients_never_fail_during_online_migration(rolemig_server, rolemig_bare_db):
    from pytest_rolemig.db.install import install
    from pytest_rolemig.mapping import load_mapping
    from pytest_rolemig.resources import demo_mapping

    db = rolemig_bare_db
    db.execute("TRUNCATE auth.users CASCADE")
    install(db, mapping=load_mapping(demo_mapping()))
    dsn = rolemig_server.dsn(db.info.dbname)
    report = load.run(dsn, users=3000, clients=4, baseline=1.0, batch_size=300)
    print(json.dumps(report, indent=2))
    assert report["client_errors"] == 0, report["error_sample"]
    assert report["migration"]["status"] == "completed"
    assert report["before"]["requests"] > 0 and report["during"]["requests"] > 0
    assert 0 < report["batch_ms"]["mean"] <= report["batch_ms"]["max"]  # 10 batches of 300, measured
    with psycopg.connect(dsn) as conn:
        legacy_left = conn.execute("""SELECT count(*) FROM public.user_profiles p
                                      JOIN migration_control.role_mapping m ON m.legacy_role = p.role
                                      WHERE m.new_role <> m.legacy_role""").fetchone()[0]
        sessions = conn.execute("SELECT count(*) FROM auth.sessions").fetchone()[0]
    assert legacy_left == 0 and sessions == 3000
