"""Snapshot URIs and store locations: a bad bucket name is bad input (exit 2), said at once."""

from __future__ import annotations

import pytest

from safeops.core.errors import BadInput, exit_code_for
from safeops.core.snapshot_store import parse_location, split_uri


@pytest.mark.parametrize("bucket", ["BAD_Bucket!", "ab", "UPPER", "-dash", "a" * 64])
def test_an_invalid_bucket_name_is_bad_input_naming_it(bucket: str) -> None:
    for parse in (
        lambda: split_uri(f"s3://{bucket}/x.json"),
        lambda: parse_location(f"s3://{bucket}/p"),
    ):
        with pytest.raises(BadInput, match="is not a valid S3 bucket name") as refused:
            parse()
        assert repr(bucket) in str(refused.value)
        assert exit_code_for(refused.value) == 2


def test_valid_buckets_parse() -> None:
    location, name = split_uri("s3://medusa-media.v2/snapshots/a.json")
    assert (location.root, location.prefix, name) == ("medusa-media.v2", "snapshots", "a.json")
    assert parse_location("s3://safeops-0a1b2c3d4e/snapshots").root == "safeops-0a1b2c3d4e"
