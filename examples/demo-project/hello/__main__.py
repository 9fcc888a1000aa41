from hello import __version__

print(f"hello-project {__version__}")
