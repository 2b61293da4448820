"""Which files a run sends and under which names (client/selection.py): no two
files of one run onto one name, folders with -r (issue 14, points 6 and 9)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from client.errors import ConfigError, DuplicateNames
from client.packets import wire_file_name
from client.selection import Upload, plan_uploads, sendable_path
from protocol.codes import MAX_WIRE_NAME_LENGTH


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(uploads: list[Upload]) -> list[str]:
    return [upload.display_name for upload in uploads]


def test_distinct_files_keep_their_base_names_and_order(tmp_path):
    b = touch(tmp_path / "b.txt")
    a = touch(tmp_path / "a.txt")
    uploads = plan_uploads([b, a])
    assert uploads == [Upload(b, b"b.txt"), Upload(a, b"a.txt")]


def test_same_base_name_twice_is_refused_naming_both_paths(tmp_path):
    first = touch(tmp_path / "a" / "x.txt", b"one")
    second = touch(tmp_path / "b" / "x.txt", b"two")
    with pytest.raises(DuplicateNames) as caught:
        plan_uploads([first, second])
    message = str(caught.value)
    assert str(first) in message and str(second) in message
    assert "'x.txt'" in message and "--rename-duplicates" in message
    assert "Nothing was sent" in message
    assert isinstance(caught.value, ConfigError)


def test_rename_duplicates_sends_later_ones_under_free_names(tmp_path, caplog):
    files = [touch(tmp_path / folder / "x.txt", folder.encode()) for folder in "abc"]
    taken = touch(tmp_path / "x (2).txt")  # a name of the run: skipped by the renaming
    with caplog.at_level(logging.WARNING):
        uploads = plan_uploads([*files, taken], rename_duplicates=True)
    assert names(uploads) == ["x.txt", "x (3).txt", "x (4).txt", "x (2).txt"]
    assert [upload.path for upload in uploads] == [*files, taken]
    assert f"{files[1]} is sent as 'x (3).txt'" in caplog.text


def test_renaming_a_name_without_extension_or_with_a_leading_dot(tmp_path):
    plain = [touch(tmp_path / d / "README") for d in "ab"]
    dotted = [touch(tmp_path / d / ".profile") for d in "ab"]
    uploads = plan_uploads([*plain, *dotted], rename_duplicates=True)
    assert names(uploads) == ["README", "README (2)", ".profile", ".profile (2)"]


def test_the_same_file_named_twice_is_sent_once(tmp_path, caplog):
    data = touch(tmp_path / "x.txt")
    with caplog.at_level(logging.WARNING):
        uploads = plan_uploads([data, tmp_path / "." / "x.txt"])
    assert names(uploads) == ["x.txt"]
    assert "sent once" in caplog.text


def test_a_folder_without_r_is_a_clear_error(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder; pass -r"):
        plan_uploads([folder])


def test_r_sends_relative_paths_under_the_folder_name_in_name_order(tmp_path):
    root = tmp_path / "photos"
    for relative in ("b.jpg", "2024/z.jpg", "2024/a.jpg", "a.jpg"):
        touch(root / relative)
    uploads = plan_uploads([root], recursive=True)
    assert names(uploads) == ["photos/a.jpg", "photos/b.jpg", "photos/2024/a.jpg", "photos/2024/z.jpg"]
    assert uploads[2].path == root / "2024" / "a.jpg"


def test_r_never_sends_a_private_key_found_in_the_folder(tmp_path, caplog):
    root = tmp_path / "work"
    touch(root / "me.info")
    touch(root / "priv.key")
    touch(root / "notes.txt")
    with caplog.at_level(logging.WARNING):
        uploads = plan_uploads([root], recursive=True)
    assert names(uploads) == ["work/notes.txt"]
    assert "priv.key: a client's private key" in caplog.text


def test_r_flattens_a_path_too_long_for_the_field_with_a_warning(tmp_path, caplog):
    root = tmp_path / "r"
    deep = root / ("d" * 200) / ("e" * 60) / "x.txt"
    touch(deep)
    with caplog.at_level(logging.WARNING):
        uploads = plan_uploads([root], recursive=True)
    assert names(uploads) == ["x.txt"]
    assert f"over the {MAX_WIRE_NAME_LENGTH} a name carries; sent as 'x.txt'" in caplog.text


def test_r_flat_and_two_folders_with_one_name_never_share_a_name(tmp_path):
    for folder in ("one", "two"):
        touch(tmp_path / folder / "same.txt")
    folders = [tmp_path / "one", tmp_path / "two"]
    assert names(plan_uploads(folders, recursive=True)) == ["one/same.txt", "two/same.txt"]
    with pytest.raises(DuplicateNames):
        plan_uploads(folders, recursive=True, flat=True)
    flat = plan_uploads(folders, recursive=True, flat=True, rename_duplicates=True)
    assert names(flat) == ["same.txt", "same (2).txt"]


def test_a_flattened_path_that_meets_another_file_is_a_duplicate(tmp_path):
    root = tmp_path / "r"
    touch(root / ("d" * 250) / "x.txt")
    alone = touch(tmp_path / "x.txt")
    with pytest.raises(DuplicateNames, match="'x.txt'"):
        plan_uploads([root, alone], recursive=True)


def test_sendable_path_answers_with_the_name_to_send_and_reads_the_file(tmp_path):
    data = touch(tmp_path / "b" / "x.txt", b"content")
    plain = sendable_path(Upload(data, b"x.txt"))
    assert plain is data
    renamed = sendable_path(Upload(data, b"photos/x (2).txt"))
    assert wire_file_name(renamed) == b"photos/x (2).txt"
    assert renamed.stat().st_size == len(b"content")
    with renamed.open("rb") as source:
        assert source.read() == b"content"
    assert os.fspath(renamed) == str(data)
    assert renamed.parent.name == "b"


# -- what a walk leaves out, and a missing file among others (issue 24, point 10) ----


def test_r_names_each_thing_it_leaves_out_and_why(tmp_path, caplog):
    root = tmp_path / "photos"
    touch(root / "a.jpg")
    elsewhere = touch(tmp_path / "elsewhere" / "b.jpg").parent
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "nothing")
    os.mkfifo(root / "pipe")
    with caplog.at_level(logging.WARNING):
        uploads = plan_uploads([root], recursive=True)
    assert names(uploads) == ["photos/a.jpg"]
    assert f"not sending {root / 'linked'}: a symbolic link to a folder" in caplog.text
    assert f"not sending {root / 'dangling.jpg'}: a symbolic link to nothing" in caplog.text
    assert f"not sending {root / 'pipe'}: not a regular file" in caplog.text
    assert caplog.messages[-1] == f"{root}: 1 file(s) to send, 3 left out (listed above)"


def test_a_missing_file_among_others_says_nothing_was_sent(tmp_path, capsys):
    from client.__main__ import ExitCode, main
    present = touch(tmp_path / "a.txt")
    missing = tmp_path / "gone.txt"
    code = main(["--config-dir", str(tmp_path), "--server", "127.0.0.1:1", "--name", "alice",
                 str(present), str(missing), str(tmp_path / "also-gone.txt")])
    assert code == ExitCode.CONFIG
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"error: gone.txt: file {str(missing)!r} not found (and 1 other file(s) of"
                    " the run cannot either); nothing was sent: each of the 3 files is checked"
                    " first")
