# Testi in italiano.
welcome = Benvenuto in {{name}}
lamp-is = La lampada è
lamp-toggle = Accendi o spegni
lamp-switched = Fatto
