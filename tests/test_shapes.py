"""Padded sizes (zojax.shapes): the smallest multiple that holds the batch, and few distinct shapes."""

import doctest

import zojax.shapes
from zojax.shapes import padded_length, padded_rows


def test_docstring_examples():
    assert doctest.testmod(zojax.shapes).failed == 0


def test_padded_rows_is_the_smallest_multiple_holding_n():
    for m in range(1, 9):
        for n in range(0, 40):
            p = padded_rows(n, m)
            assert p % m == 0 and n <= p < n + m


def test_padded_length_plain_and_geometric():
    for m in (1, 8, 32):
        for n in range(1, 300):
            p = padded_length(n, m)
            assert p % m == 0 and max(n, m) <= p < max(n, m) + m
            g = padded_length(n, m, geometric=True)
            assert g % m == 0 and g >= max(n, m)
            if n > m:  # the next 2^k or 1.5·2^k is below 1.5·n (worst: n = 2^k + 1), then to m
                assert g <= padded_rows(-(-3 * n // 2), m)
    # geometric buckets: lengths 65..96 share one shape, 97..128 the next
    assert {padded_length(n, 8, geometric=True) for n in range(65, 97)} == {96}
    assert {padded_length(n, 8, geometric=True) for n in range(97, 129)} == {128}
