"""Routing rules: the model and its evaluation (pure), the rules file parser, the watcher.

`rules` decides which provider serves a request and why; `file` turns YAML into a `RuleSet`
or every problem at once; `watcher` hot-reloads it. Imports config, catalog and domain only.
"""
