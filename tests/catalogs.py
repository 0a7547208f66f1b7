"""Catalogs the tests share, as TOML text: the toy pair with every routing rule declared."""

from conftest import TOY_CATALOG

POLICY_CATALOG = (
    TOY_CATALOG
    + """
[tasks.toy.tiers.premium]
start = "toy-large"

[tasks.toy.complexity]
score = "nonzero_fraction"
above = 0.5

[tasks.toy.load]
high_water = 5
low_water = 2
"""
)
