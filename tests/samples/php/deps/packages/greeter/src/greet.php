<?php

namespace Greeter;

function greet(string $name): string
{
    return "Hello, $name!";
}
