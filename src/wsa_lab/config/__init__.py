"""The run's config, in one layer: `schema` (a dataclass per section, each field documented), `strict` (the
converter that turns a section into its dataclass with one-line errors), `validate` (the start-up checks of a
composed config: `validate(cfg) -> RunSettings`), `resolvers` (registered when any part of this package is
imported, so every composed config can resolve them). Where the files are and their defaults: `wsa_lab.conf_files`.
"""

from wsa_lab.config.resolvers import register_resolvers

register_resolvers()
