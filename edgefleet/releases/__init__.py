"""Releases: what gets rolled out. ``upstream`` (fetch or generate a Talos boot ISO), ``image``
(remaster it, read a release image back), ``template`` (the Packer template's variables), ``packer``
(the Packer runner), ``catalog`` (releases and their lifecycle in the state store), ``build`` (the
whole build as plain functions)."""
