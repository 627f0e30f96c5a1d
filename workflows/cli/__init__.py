"""The `terracube` command line: data commands in app.py, model commands in model_commands.py."""
