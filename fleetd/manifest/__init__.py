"""The manifest layer: ``fleet.yaml`` (one file or a directory) -> validated models -> ``DesiredState``.

Flow: ``reading`` (size cap, decoding) -> ``yaml_source`` (plain data + positions, duplicate keys) ->
``models`` (pydantic, strict, unknown keys rejected) -> ``merging`` (files into one manifest) ->
``semantics`` (cross-references and feasibility) -> ``resolving`` (defaults merged, units resolved).
``loading.load_manifest`` runs it all and collects every diagnostic with file, line and column.
"""
