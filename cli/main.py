import click

@click.group()
def main():
    """depthflow"""
