"""The music player plugin: a queue of files and streams played into the call, encrypted."""
