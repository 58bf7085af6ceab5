"""The request spec's models on their own: a filter name of the wrong type is a 422-style ValidationError naming
the field, never a TypeError (the fuzzer found ``"name": [...]`` raising one: a 500)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.imaging.spec import Spec, field_errors


@pytest.mark.parametrize("name", [["gaussian"], {"a": 1}, 3, None])
def test_a_filter_name_that_is_not_a_string_is_a_validation_error(name):
    text = json.dumps({"filter": {"name": name}, "roi": {"boxes": [[0, 0, 4, 4]]}})
    with pytest.raises(ValidationError) as info:
        Spec.model_validate_json(text)
    assert field_errors(info.value, "spec")[0]["field"].startswith("spec.filter")
