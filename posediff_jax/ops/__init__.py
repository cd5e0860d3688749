"""Array operations that are not neural-network layers (point-cloud sampling and neighbourhoods)."""
