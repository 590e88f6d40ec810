# English texts (Fluent: https://projectfluent.org).
# docs/scripting.md, "Translations".
welcome = Welcome to {{name}}
lamp-is = The lamp is
lamp-toggle = Switch the lamp
lamp-switched = Done
