"""`evicctl top`: the operator dashboard. Nothing here is imported by `import evicctl`."""
