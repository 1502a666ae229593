"""Configuration files shipped with jrt-prompt (installed as the package ``jrt_prompt.configs``).

- ``models.yaml``: the model roster (names, hub ids, families, adapters, architecture sizes).
"""
