"""Operator tools: cost estimate, architecture picture, parameter files, deploy, publish, tootctl.

The pure modules (costs, architecture, parameter_files, template_values,
quick_create) read a built template as a plain dict; the command-line tools
(deploy.py, publish.py, tootctl.py) drive the real `aws` CLI.
"""
