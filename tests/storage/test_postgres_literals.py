"""The store's batches bind their parameters as literals (server/storage/postgres/literals.py):
the values a database reads back are those given, whatever they hold, and psycopg's
general adaptation is not run per statement.

Against a throwaway cluster (tests/backends/postgres.py): skipped without the
binaries, but not in CI.
"""

from __future__ import annotations

import math

import psycopg
import pytest

from server.storage.postgres import literals
from server.storage.postgres.literals import Binder
from server.storage.postgres.store import PostgresMetadata

pytestmark = pytest.mark.needed_in_ci

#: Values of every type the store's statements take, with what quoting could get wrong.
VALUES = [
    None, True, False, 0, -1, 2**62, -(2**62), 0.0, -0.0, 1.5, -1_700_000_000.123456,
    1e300, -1e-300, math.inf, -math.inf,
    "", "plain", "it's", "back\\slash", "\\x41", "$$dollar$$", "--comment", "/* c */",
    "naïve ünïcode ✓", "tab\tnew\nline", "'; DROP TABLE clients; --",
    b"", b"\x00\x01\xff", b"'\\", bytearray(b"\x00\x7f"), memoryview(b"\x80\x00"),
]


@pytest.fixture
def db(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def _select(value: object) -> str:
    """A float goes where the store puts one: a double precision column."""
    return "SELECT CAST(%s AS double precision)" if isinstance(value, float) else "SELECT %s"


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_literal_reads_back_as_the_value_given(db, value):
    text = Binder(db).text([(_select(value), (value,))])
    found = db.execute(text).fetchone()[0]
    expected = bytes(value) if isinstance(value, (bytearray, memoryview)) else value
    assert found == expected and type(found) is type(expected)
    if isinstance(value, float):  # to the sign of a zero
        assert math.copysign(1, found) == math.copysign(1, value)


def test_a_not_a_number_reads_back_as_one(db):
    found = db.execute(Binder(db).text([(_select(math.nan), (math.nan,))])).fetchone()[0]
    assert math.isnan(found)


def test_a_negative_number_after_a_minus_is_not_a_comment(db):
    text = Binder(db).text([("SELECT 5 -%s, 1", (-2,))])
    assert db.execute(text).fetchone() == (7, 1)


def test_several_statements_are_one_text_each_bound(db):
    text = Binder(db).text([("SELECT %s", ("a",)), ("SELECT %s, %s", (1, b"b"))])
    cursor = db.execute(text)
    assert cursor.fetchone() == ("a",)
    assert cursor.nextset() and cursor.fetchone() == (1, b"b")


def test_a_list_is_left_to_psycopg(db):
    text = Binder(db).text([("SELECT 2 = ANY(%s)", ([1, 2],))])
    assert db.execute(text).fetchone()[0] is True


def test_text_with_a_nul_is_refused_not_cut(db):
    with pytest.raises(psycopg.DataError):
        Binder(db).text([("SELECT %s", ("a\x00b",))])


def test_placeholders_and_parameters_must_agree(db):
    with pytest.raises(psycopg.ProgrammingError):
        Binder(db).text([("SELECT %s, %s", (1,))])


def test_without_standard_conforming_strings_bytes_and_text_still_read_back(db):
    db.execute("SET standard_conforming_strings = off")
    value, text = b"\\'\x00", "back\\slash 'q'"
    bound = Binder(db).text([("SELECT %s, %s", (value, text))])
    assert db.execute(bound).fetchone() == (value, text)


def test_the_stores_batches_bind_without_psycopgs_adaptation(postgres_url, monkeypatch):
    """Writes that ride with a read, and with the commit: not one mogrify (its general
    adaptation costs the loop more than the statements' few types need)."""
    mogrified = []
    original = psycopg.ClientCursor.mogrify

    def counted(self, query, params=None):
        mogrified.append(query)
        return original(self, query, params)

    monkeypatch.setattr(psycopg.ClientCursor, "mogrify", counted)
    store = PostgresMetadata.open(postgres_url)
    try:
        client_id = b"c" * 16
        with store.transaction():
            store.insert_client(client_id, "carol", 1_700_000_000.0, "v3", "127.0.0.1")
            store.set_binding(client_id, "127.0.0.1", 1_700_000_000.0)
        with store.transaction():
            store.set_keys(client_id, b"public", b"aes", 1_700_000_001.0)
        row, binding = store.client_and_binding(client_id)  # the writes go with this read
        store.sync()
    finally:
        store.close()
    assert row is not None and row.public_key == b"public" and binding is not None
    assert store.statements > store.round_trips  # batches did go out
    assert mogrified == []


def test_a_statements_pieces_are_split_once():
    literals._template.cache_clear()
    literals._template("SELECT %s")
    literals._template("SELECT %s")
    assert literals._template.cache_info().hits == 1


def test_a_statements_own_braces_are_kept(db):
    """The statement becomes a format template: its braces are text, not fields."""
    text = Binder(db).text([("SELECT '{}{0}}' || %s", ("{x}",))])
    assert db.execute(text).fetchone()[0] == "{}{0}}{x}"


def test_a_subclass_of_a_bound_type_is_left_to_psycopg(db):
    class Count(int):
        pass

    text = Binder(db).text([("SELECT %s + 1", (Count(2),))])
    assert db.execute(text).fetchone()[0] == 3
