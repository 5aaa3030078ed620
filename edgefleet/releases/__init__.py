"""Releases, what gets rolled out: ``upstream`` (the Talos boot ISO), ``image`` (remaster, read back),
``reproducible`` (ISO bytes independent of the clock), ``template`` and ``packer`` (the Packer build),
``catalog`` (releases and their lifecycle in the state store), ``build`` (the whole build)."""
