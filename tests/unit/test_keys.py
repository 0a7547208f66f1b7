from __future__ import annotations

import pytest

from cascadeq.protocol.keys import InvalidName, Keys, check_id, check_name


@pytest.mark.parametrize("rid", ["abc", "A_b-9", "x" * 64, "0123456789abcdef0123456789abcdef"])
def test_plain_ids_pass(rid: str) -> None:
    assert check_id(rid) == rid


@pytest.mark.parametrize(
    "rid", ["", "x" * 65, "a:b", "a*", "{tag}", "a b", "a\nb", "ab\n", "../x", "é", 7, None]
)
def test_ids_that_could_reach_other_keys_are_refused(rid: object) -> None:
    with pytest.raises(InvalidName):
        check_id(rid)  # type: ignore[arg-type]


def test_names_and_key_layout() -> None:
    assert check_name("model", "digits-small") == "digits-small"
    with pytest.raises(InvalidName, match="model name"):
        check_name("model", "Digits Small")
    keys = Keys("cq")
    assert keys.ingress == "cq:ingress"
    assert keys.model_stream("m") == "cq:q:m:default"
    assert keys.result("abc") == "cq:res:abc"
    assert keys.reply_channel("c1") == "cq:reply:c1"
    assert len({keys.ingress, keys.dead_letter, keys.catalog, keys.model_stream("m")}) == 4
