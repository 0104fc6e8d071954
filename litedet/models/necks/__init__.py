"""models/necks"""
