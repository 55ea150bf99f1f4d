"""The cache folder: named by the environment, and a temporary folder of this user's,
said in one line, where that cannot be written."""

import os
import tempfile

import pytest

from estimator_models import cache


@pytest.fixture
def temporary(tmp_path, monkeypatch):
    """The system's temporary directory, for this test: an empty folder."""
    folder = tmp_path / 'tmp'
    folder.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(folder))
    return folder


def test_the_environment_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    assert cache.configured() == str(tmp_path / 'home/.cache/estimator_lstm')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache.configured() == str(tmp_path / 'xdg/estimator_lstm')
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'mine'))
    assert cache.directory() == str(tmp_path / 'mine')
    assert os.path.isdir(tmp_path / 'mine')


def test_an_unwritable_folder_gives_this_users_temporary_one_and_one_line(
        tmp_path, temporary, monkeypatch, capsys):
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'a_file/cache'))
    fallback = str(temporary / f'estimator_lstm-{os.getuid()}')
    assert cache.directory() == cache.directory() == fallback
    assert capsys.readouterr().err == (
        f'warning: cannot write the cache at {tmp_path}/a_file/cache (Not a directory); using {fallback}; '
        f'set {cache.ENV} to a writable folder\n')
    assert os.stat(fallback).st_mode & 0o777 == 0o700


def test_a_temporary_folder_others_can_write_is_not_used(tmp_path, temporary, monkeypatch, capsys):
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'a_file/cache'))
    shared = temporary / f'estimator_lstm-{os.getuid()}'
    shared.mkdir()
    shared.chmod(0o777)
    used = cache.directory()
    assert os.path.dirname(used) == str(temporary) and used != str(shared)
    assert f'using {used};' in capsys.readouterr().err
