"""The media side: LiveKit connection, frame routing to plugins, outputs."""
