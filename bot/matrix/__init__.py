"""The Matrix side: login and device persistence, sync, messages, Olm to-device."""
