"""The ClickHouse test server (tests/chserver.py) through the real driver, ``clickhouse-connect``: DDL, inserts of
Python rows and of Arrow tables, reads with and without FINAL, ALTER, errors, authentication, settings, sessions and
HTTP compression. Each test works in its own database. With ``WALLABY_TEST_CLICKHOUSE_URL`` set, the same tests run
against that real ClickHouse.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import uuid
import zlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pyarrow as pa
import pytest
import urllib3
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.chserver import ClickHouseServer, clickhouse  # noqa: F401

COLUMNS = ["id", "name", "score", "amount", "ts", "uid", "tags", "flag", "_version", "_is_deleted"]
ITEMS_DDL = """
CREATE TABLE items (
    id Int64, name String, score Nullable(Float64), amount Decimal(38, 9), ts DateTime64(6, 'UTC'), uid UUID,
    tags Array(String), flag Bool, _version UInt64, _is_deleted UInt8
) ENGINE = ReplacingMergeTree(_version, _is_deleted) ORDER BY id
"""
UTC = dt.UTC


def _item(key: int, name: str, version: int = 1, deleted: int = 0) -> list[Any]:
    return [key, name, None if key % 2 else key / 4, Decimal(f"{key}2345678901234567890.123456789"),
            dt.datetime(2024, 5, key, 7, 8, 9, 123456 + key, tzinfo=UTC), uuid.UUID(int=key * 7919),
            [f"t{key}", "x;y'z"] if key % 2 else [], bool(key % 2), version, deleted]


def _expected(row: list[Any]) -> tuple[Any, ...]:
    """A row as the driver reads it back: naive UTC datetimes, everything else as inserted."""
    out = list(row)
    out[4] = row[4].replace(tzinfo=None)
    return tuple(out)


def _arrow(rows: list[list[Any]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table({
        "id": pa.array(columns[0], pa.int64()),
        "name": pa.array(columns[1], pa.string()),
        "score": pa.array(columns[2], pa.float64()),
        "amount": pa.array(columns[3], pa.decimal128(38, 9)),
        "ts": pa.array(columns[4], pa.timestamp("us", tz="UTC")),
        "uid": pa.array([u.bytes for u in columns[5]], pa.uuid()),
        "tags": pa.array(columns[6], pa.list_(pa.string())),
        "flag": pa.array(columns[7], pa.bool_()),
        "_version": pa.array(columns[8], pa.uint64()),
        "_is_deleted": pa.array(columns[9], pa.uint8()),
    })


def _http(server: ClickHouseServer, body: bytes = b"", params: dict[str, str] | None = None,
          headers: dict[str, str] | None = None, password: str | None = None) -> Any:
    """A raw POST to the HTTP interface, the response body left as sent."""
    secret = server.password if password is None else password
    auth = base64.b64encode(f"{server.user}:{secret}".encode()).decode()
    return urllib3.PoolManager().request(
        "POST", f"http://{server.host}:{server.port}/?{urlencode(params or {})}", body=body,
        headers={"Authorization": f"Basic {auth}", **(headers or {})}, decode_content=False, retries=False)


@pytest.fixture
def database(clickhouse: ClickHouseServer) -> Iterator[str]:  # noqa: F811
    name = f"chserver_{uuid.uuid4().hex[:12]}"
    admin = clickhouse.client()
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def test_ping(clickhouse: ClickHouseServer) -> None:  # noqa: F811
    response = urllib3.PoolManager().request("GET", f"http://{clickhouse.host}:{clickhouse.port}/ping")
    assert response.status == 200
    assert response.data == b"Ok.\n"


@pytest.mark.parametrize("compress", [True, "lz4", "zstd", "gzip", False])
def test_replacing_merge_tree_round_trip(clickhouse: ClickHouseServer, database: str, compress: Any) -> None:  # noqa: F811
    client = clickhouse.client(database=database, compress=compress)
    client.command(ITEMS_DDL)
    python_rows = [_item(1, "one"), _item(2, "two")]
    arrow_rows = [_item(3, "three"), _item(4, "four")]

    assert client.insert("items", python_rows, column_names=COLUMNS).written_rows == 2
    assert client.insert_arrow("items", _arrow(arrow_rows)).written_rows == 2

    result = client.query("SELECT * FROM items ORDER BY id")
    assert result.column_names == tuple(COLUMNS)
    assert result.result_rows == [_expected(row) for row in python_rows + arrow_rows]
    arrow = client.query_arrow("SELECT id, name, amount, tags FROM items ORDER BY id", use_strings=True)
    assert arrow.column("id").to_pylist() == [1, 2, 3, 4]
    assert arrow.column("name").to_pylist() == ["one", "two", "three", "four"]
    assert arrow.column("amount").to_pylist() == [row[3] for row in python_rows + arrow_rows]

    # a newer version of 1, a delete of 2 (as Arrow), and of 3 an older version that must lose
    client.insert("items", [_item(1, "one v2", version=2), _item(3, "three v0", version=0)], column_names=COLUMNS)
    client.insert_arrow("items", _arrow([_item(2, "two", version=2, deleted=1)]))
    final = client.query("SELECT id, name, _version FROM items FINAL ORDER BY id").result_rows
    assert final == [(1, "one v2", 2), (3, "three", 1), (4, "four", 1)]
    final_arrow = client.query_arrow("SELECT id, name FROM items FINAL ORDER BY id", use_strings=True)
    assert final_arrow.to_pylist() == [{"id": 1, "name": "one v2"}, {"id": 3, "name": "three"},
                                       {"id": 4, "name": "four"}]
    assert client.command("SELECT count() FROM items FINAL") == 3
    client.close()


def test_insert_arrow_many_rows(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    client = clickhouse.client(database=database)
    client.command("CREATE TABLE wide (id Int64, s String, v Int64) ENGINE = MergeTree ORDER BY id")
    n = 200_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "s": pa.array([f"s{i}" for i in range(n)]),
                      "v": pa.array(range(0, 3 * n, 3), pa.int64())})
    assert client.insert_arrow("wide", table).written_rows == n
    assert client.query("SELECT count(), sum(v), max(s) FROM wide").result_rows == [(n, 3 * n * (n - 1) // 2, "s99999")]
    back = client.query_arrow("SELECT id, v FROM wide ORDER BY id")
    assert back.num_rows == n
    assert back.column("v").to_pylist()[-1] == 3 * (n - 1)


def test_alter_add_drop_modify_column(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    client = clickhouse.client(database=database)
    client.command("CREATE TABLE t (id Int64, a String) ENGINE = MergeTree ORDER BY id")
    client.insert("t", [[1, "x"]], column_names=["id", "a"])
    client.command("ALTER TABLE t ADD COLUMN b Nullable(Int32) AFTER a")
    client.command("ALTER TABLE t ADD COLUMN c String DEFAULT 'dflt'")
    client.insert("t", [[2, "y", 7]], column_names=["id", "a", "b"])
    assert client.query("SELECT id, a, b, c FROM t ORDER BY id").result_rows == [(1, "x", None, "dflt"),
                                                                                (2, "y", 7, "dflt")]
    client.command("ALTER TABLE t MODIFY COLUMN b Nullable(Int64)")
    client.command("ALTER TABLE t DROP COLUMN a")
    result = client.query("SELECT * FROM t ORDER BY id")
    assert result.column_names == ("id", "b", "c")
    assert [t.name for t in result.column_types] == ["Int64", "Nullable(Int64)", "String"]
    assert result.result_rows == [(1, None, "dflt"), (2, 7, "dflt")]
    client.insert_arrow("t", pa.table({"id": pa.array([3], pa.int64()), "b": pa.array([2**40], pa.int64())}))
    assert client.query("SELECT b, c FROM t WHERE id = 3").result_rows == [(2**40, "dflt")]


def test_wrong_password_is_authentication_failed(clickhouse: ClickHouseServer) -> None:  # noqa: F811
    wrong = f"wrong-{uuid.uuid4().hex}"
    with pytest.raises(DatabaseError) as caught:
        clickhouse.client(password=wrong)
    error = caught.value
    assert error.code == 516
    assert error.name == "AUTHENTICATION_FAILED"
    assert "Authentication failed" in str(error)
    assert wrong not in str(error)
    assert clickhouse.password not in str(error)

    response = _http(clickhouse, b"SELECT 1", password=wrong)
    assert response.status == 403
    assert response.headers["X-ClickHouse-Exception-Code"] == "516"
    assert response.data.decode().startswith(
        f"Code: 516. DB::Exception: {clickhouse.user}: Authentication failed: password is incorrect, "
        "or there is no user with such name.")
    assert wrong.encode() not in response.data


def test_sql_errors_are_database_errors(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    client = clickhouse.client(database=database)
    with pytest.raises(DatabaseError) as caught:
        client.query("SELECT * FROM no_such_table")
    assert (caught.value.code, caught.value.name) == (60, "UNKNOWN_TABLE")
    assert "UNKNOWN_TABLE" in str(caught.value)

    with pytest.raises(DatabaseError) as caught:
        client.command("CREATE TABLE broken (")
    assert (caught.value.code, caught.value.name) == (62, "SYNTAX_ERROR")

    with pytest.raises(DatabaseError) as caught:
        client.command("SELECT 1; SELECT 2")
    assert caught.value.code == 62
    assert "Multi-statements are not allowed" in str(caught.value)

    client.command("CREATE TABLE t (id Int64) ENGINE = MergeTree ORDER BY id")
    with pytest.raises(DatabaseError) as caught:
        client.insert_arrow("t", pa.table({"id": pa.array(["not a number"])}))
    assert caught.value.code is not None
    assert client.command("SELECT count() FROM t") == 0

    response = _http(clickhouse, b"SELECT * FROM no_such_table", params={"database": database})
    assert response.status == 404
    assert response.headers["X-ClickHouse-Exception-Code"] == "60"
    assert response.data.startswith(b"Code: 60. DB::Exception: ")


def test_settings_apply_to_their_query_and_sessions_keep_set(clickhouse: ClickHouseServer) -> None:  # noqa: F811
    client = clickhouse.client()
    query = "SELECT getSetting('max_block_size')"
    default = client.command(query)
    assert client.command(query, settings={"max_block_size": 1234}) == 1234
    assert client.command(query) == default

    client.command("SET max_block_size = 4321")  # the client's session keeps it
    assert client.command(query) == 4321
    assert client.command(query, settings={"max_block_size": 99}) == 99
    assert client.command(query) == 4321
    other = clickhouse.client()
    assert other.command(query) == default

    with pytest.raises(DatabaseError) as caught:
        client.command("SELECT 1", settings={"no_such_setting_at_all": 1})
    assert caught.value.name == "UNKNOWN_SETTING"
    assert client.command(query) == 4321

    query_id = str(uuid.uuid4())
    assert client.query("SELECT 1", settings={"query_id": query_id}).query_id == query_id


def test_query_parameters_in_url_and_form(clickhouse: ClickHouseServer) -> None:  # noqa: F811
    query = "SELECT {s:String} AS s, {n:Int64} AS n, length({s:String}) AS len"
    assert clickhouse.client().query(query, parameters={"s": "a'b\\c", "n": -5}).result_rows == [("a'b\\c", -5, 5)]
    form = clickhouse.client(form_encode_query_params=True)  # multipart/form-data: query and param_* fields
    assert form.query(query, parameters={"s": "x;y", "n": 7}).result_rows == [("x;y", 7, 3)]
    big = "z" * 200_000  # too long for the URL: the driver sends it as a form field
    assert clickhouse.client().query(query, parameters={"s": big, "n": 1}).result_rows == [(big, 1, 200_000)]


def test_database_parameter_and_use(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    client = clickhouse.client(database=database)
    assert client.command("SELECT currentDatabase()") == database
    plain = clickhouse.client()
    assert plain.command("SELECT currentDatabase()") == "default"
    plain.command(f"USE {database}")  # kept by plain's session only
    assert plain.command("SELECT currentDatabase()") == database
    assert clickhouse.client().command("SELECT currentDatabase()") == "default"
    assert client.command("SELECT currentDatabase()", settings={"database": "default"}) == "default"


def test_http_interface(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    def ok(body: bytes, **params: str) -> Any:
        response = _http(clickhouse, body, params={"database": database, **params})
        assert response.status == 200, response.data
        return response

    ok(b"CREATE TABLE t (a Int32, s String) ENGINE = MergeTree ORDER BY a")
    ok(b"1\tone\n2\ttwo\n", query="INSERT INTO t FORMAT TabSeparated")
    ok(b"INSERT INTO t (a, s) FORMAT CSV\n3,three\n")
    ok(b"INSERT INTO t VALUES (4, 'fo;ur')")
    response = ok(b"SELECT a, s FROM t WHERE a > {low:Int32} AND a < 5 ORDER BY a", param_low="1",
                  default_format="JSONEachRow")
    assert response.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert [json.loads(line) for line in response.data.splitlines()] == [
        {"a": 2, "s": "two"}, {"a": 3, "s": "three"}, {"a": 4, "s": "fo;ur"}]
    assert "X-ClickHouse-Format" not in ok(b"CREATE TABLE u (a Int32) ENGINE = Memory").headers
    summary = json.loads(ok(b"6\tsix\n", query="INSERT INTO t FORMAT TSV").headers["X-ClickHouse-Summary"])
    assert summary["written_rows"] == "1"

    response = _http(clickhouse, b"SELECT 1", params={"session_id": str(uuid.uuid4()), "session_check": "1"})
    assert response.headers["X-ClickHouse-Exception-Code"] == "372"  # SESSION_NOT_FOUND


def test_http_insert_compressed_body(clickhouse: ClickHouseServer, database: str) -> None:  # noqa: F811
    params = {"database": database}
    _http(clickhouse, b"CREATE TABLE t (a Int32, s String) ENGINE = MergeTree ORDER BY a", params=params)
    insert = {**params, "query": "INSERT INTO t FORMAT TSV"}
    response = _http(clickhouse, gzip.compress(b"5\tfive\n"), params=insert, headers={"Content-Encoding": "gzip"})
    assert response.status == 200, response.data
    response = _http(clickhouse, zlib.compress(b"6\tsix\n"), params=insert, headers={"Content-Encoding": "deflate"})
    assert response.status == 200, response.data
    assert _http(clickhouse, b"SELECT a, s FROM t ORDER BY a", params=params).data == b"5\tfive\n6\tsix\n"


@pytest.mark.parametrize("encoding", ["zstd", "lz4", "gzip", "deflate"])
def test_compressed_responses(clickhouse: ClickHouseServer, encoding: str) -> None:  # noqa: F811
    import lz4.frame

    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]
    decompress = {"zstd": zstd.decompress, "lz4": lz4.frame.decompress, "gzip": gzip.decompress,
                  "deflate": zlib.decompress}[encoding]
    response = _http(clickhouse, b"SELECT number FROM numbers(1000) FORMAT TabSeparated",
                     params={"enable_http_compression": "1"}, headers={"Accept-Encoding": encoding})
    assert response.status == 200
    assert response.headers["Content-Encoding"] == encoding
    assert decompress(response.data) == b"".join(b"%d\n" % i for i in range(1000))
