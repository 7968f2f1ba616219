"""Configuration: flags beat RATING_* variables, which beat defaults; bad values are refused."""

import argparse

import pytest

from agent.config import Settings


def parse(argv, environ):
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return Settings.load(parser.parse_args(argv), environ=environ)


def test_defaults_serve_on_loopback_8080():
    settings = parse([], {})
    assert (settings.host, settings.port, settings.max_units, settings.reservation_share) == (
        "127.0.0.1", 8080, 14400, 100)


def test_environment_overrides_defaults_and_flags_override_environment():
    settings = parse(["--port", "9001"], {"RATING_PORT": "9000", "RATING_CALL_GRACE": "5"})
    assert (settings.port, settings.call_grace) == (9001, 5)


@pytest.mark.parametrize("environ", [{"RATING_RESERVATION_SHARE": "0"}, {"RATING_RESERVATION_SHARE": "101"},
                                     {"RATING_MAX_UNITS": "0"}, {"RATING_MAX_UNITS": "10000001"}, {"RATING_PORT": "http"},
                                     {"RATING_REDIS_BATCH": "0"}, {"RATING_GRAPHQL_MAX_IN_FLIGHT": "-1"}])
def test_invalid_values_are_refused(environ):
    with pytest.raises(ValueError):
        parse([], environ)


def test_graphql_documents_in_flight_are_bounded_by_default_and_set_by_flag_or_environment():
    assert parse([], {}).graphql_max_in_flight == 16
    assert parse([], {"RATING_GRAPHQL_MAX_IN_FLIGHT": "0"}).graphql_max_in_flight == 0
    assert parse(["--graphql-max-in-flight", "4"], {"RATING_GRAPHQL_MAX_IN_FLIGHT": "8"}).graphql_max_in_flight == 4


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_tokens_never_appear_in_the_settings_repr():
    from agent.config import Settings

    shown = repr(Settings(management_token="m-s3cret", agent_token="a-s3cret"))
    assert "s3cret" not in shown and "redis_url" in shown
