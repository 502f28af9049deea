"""Phone channel: the provider-neutral CTI event API from the PBX, and IVR flows."""
