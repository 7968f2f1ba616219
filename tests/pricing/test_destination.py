"""Reading a destination (`number_of`) and classifying a rate prefix (`prefix_key`); fix #2 (number normalizer)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing.destination import number_of, prefix_key, read_number, scheme_length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:39", 4),
        ("sips:39", 5),
        ("tel:+39", 4),
        ("SIP:39", 4),
        ("Tel:+39", 4),
        ("sip", 0),
        ("39040", 0),
        ("http:39", 0),
        ("", 0),
    ],
)
def test_scheme_length_recognises_sip_sips_and_tel_case_insensitively(text, expected):
    assert scheme_length(text) == expected


@pytest.mark.parametrize(
    ("destination", "number"),
    [
        pytest.param("sip:39040123456@domain:5060", "39040123456", id="kamailio-to-uri-with-domain-and-port"),
        pytest.param("sip:39040123456@anotherdomain.com:5060", "39040123456", id="integration-to-uri"),
        pytest.param("sips:39040123456@domain", "39040123456", id="sips-scheme"),
        pytest.param("SIP:39040123456@domain", "39040123456", id="upper-case-scheme"),
        pytest.param("tel:+39-040-123", "39040123", id="tel-uri-with-plus-and-dashes"),
        pytest.param("tel:+39-040-123;phone-context=+39", "39040123", id="tel-uri-with-parameters"),
        pytest.param("sip:+39040;user=phone@x", "39040", id="user-parameters-and-plus"),
        pytest.param("sip:39040123456", "39040123456", id="uri-without-domain"),
        pytest.param("39040123123", "39040123123", id="tutorial-bare-number"),
        pytest.param("393291234567", "393291234567", id="engine-test-bare-number"),
        pytest.param("+39040123", "39040123", id="bare-number-with-plus"),
        pytest.param("+39 (040) 123.456", "39040123456", id="visual-separators-removed"),
        pytest.param("  39040  ", "39040", id="surrounding-whitespace-stripped"),
        pytest.param("sip:alice@example.com", "alice", id="non-numeric-user-kept"),
        pytest.param("sip:al-ice@example.com", "al-ice", id="separators-kept-in-non-numeric-user"),
    ],
)
def test_number_of_extracts_the_dialled_number(destination, number):
    assert number_of(destination) == number


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param("39", (False, "39", 2), id="bare-digits"),
        pytest.param("+39", (False, "39", 2), id="plus-digits"),
        pytest.param("sip:39", (False, "39", 2), id="canyan-sip-prefix"),
        pytest.param("sips:39", (False, "39", 2), id="sips-prefix"),
        pytest.param("tel:+39", (False, "39", 2), id="tel-plus-prefix"),
        pytest.param("sip:+3904", (False, "3904", 4), id="sip-plus-prefix"),
        pytest.param("sip:alice@", (True, "sip:alice@", 6), id="user-prefix-is-raw"),
        pytest.param("sip:39040@example.com", (True, "sip:39040@example.com", 17), id="full-uri-prefix-is-raw"),
        pytest.param("tel:+39-", (False, "39", 2), id="visual-separators-dropped-from-number-prefix"),
        pytest.param("39-040", (False, "39040", 5), id="separators-dropped-from-bare-number-prefix"),
        pytest.param("sip:", (True, "sip:", 0), id="bare-scheme-is-raw"),
        pytest.param("", (False, "", 0), id="empty-prefix-matches-every-number"),
    ],
)
def test_prefix_key_classifies_number_and_raw_prefixes(prefix, expected):
    assert prefix_key(prefix) == expected


def test_all_spellings_of_a_number_prefix_share_one_key():
    keys = {prefix_key(p) for p in ("39", "+39", "sip:39", "sips:39", "tel:+39", "sip:+39")}
    assert keys == {(False, "39", 2)}


def test_a_number_prefix_key_is_a_prefix_of_the_number_of_a_matching_uri():
    _, key, _ = prefix_key("sip:39")
    assert number_of("sip:39040123456@anotherdomain.com:5060").startswith(key)
    assert number_of("39040123123").startswith(key)
    assert number_of("tel:+39-040-123").startswith(key)


digits = st.text("0123456789", min_size=1, max_size=20)
PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(digits, st.sampled_from(["{}", "+{}", "sip:{}@host", "sips:+{}@host:5061", "tel:+{}", "sip:{};user=phone@h"]))
def test_every_spelling_of_a_number_reads_as_the_same_number(number, spelling):
    assert number_of(spelling.format(number)) == number


@PROPERTY
@given(digits, st.sampled_from(["{}", "+{}", "sip:{}", "sips:{}", "tel:+{}", "sip:+{}"]))
def test_every_spelling_of_a_digit_prefix_is_a_number_prefix_keyed_by_its_digits(number, spelling):
    assert prefix_key(spelling.format(number)) == (False, number, len(number))


@PROPERTY
@given(st.text(max_size=30))
def test_number_of_is_idempotent(destination):
    once = number_of(destination)
    if once.isdigit():
        assert number_of(once) == once


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["3", "9", "0", "+", "sip:", "SIPS:", "tel:", "@", ";", "-", " ", ":", "a", "٣", "."]),
                max_size=12).map("".join))
def test_the_fast_reading_of_common_shapes_agrees_with_the_general_one(destination):
    assert number_of(destination) == read_number(destination)
